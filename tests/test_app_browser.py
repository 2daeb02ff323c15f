"""Browser test: headless Chromium drives the running app; screenshots go to screenshots/.

Needs the `chromium` system package and the `playwright` Python package; the
test is skipped when either is missing. Requests to any host other than the
app's loopback address are aborted, so the page cannot reach the internet.
"""

import os
import shutil
import time

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import pytest  # noqa: E402

from app_fixtures import PROJECT, corpus_text, running_app  # noqa: E402

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is not installed: pip install playwright")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip("chromium is not installed: apt-get install -y chromium",
                allow_module_level=True)

SCREENSHOTS = PROJECT / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_app(tmp_path_factory) as url:
        yield url


@pytest.fixture(scope="module")
def page(server):
    """A page of the app in headless Chromium that can reach the app's address only."""
    blocked = []

    def only_loopback(route):
        if route.request.url.startswith(server):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.route("**/*", only_loopback)
        page.goto(server)
        page.get_by_role("button", name="Generate").wait_for(timeout=30_000)
        yield page
        browser.close()
    print("blocked requests:", blocked)


def generated_chars(page, panel: str) -> int:
    return page.locator(f"#{panel}-text span[title]").count()


def test_generate_streams_both_panels_and_stops(page):
    SCREENSHOTS.mkdir(exist_ok=True)
    prefix = page.locator("#prefix textarea")
    prefix.fill("The Time Traveller, 1895")
    page.locator("#generate").click()

    # Both panels fill in at the reading pace.
    deadline = time.monotonic() + 30
    while min(generated_chars(page, "untrained"), generated_chars(page, "trained")) < 20:
        assert time.monotonic() < deadline, "no generated text arrived in both panels"
        time.sleep(0.1)
    assert "the time traveller" in page.locator("#trained-text").inner_text()
    assert "d2l preprocessing" in page.locator("#prefix-note").inner_text()

    # Stop ends the stream: the text stops growing before the requested 300 characters.
    page.locator("#stop").click()
    time.sleep(0.5)
    stopped = generated_chars(page, "trained")
    time.sleep(1.0)
    assert generated_chars(page, "trained") == stopped
    assert stopped < 300
    page.screenshot(path=str(SCREENSHOTS / "generate.png"), full_page=True)

    # The server is free for the next request straight away.
    page.locator("#generate").click()
    deadline = time.monotonic() + 30
    while generated_chars(page, "trained") in (0, stopped):
        assert time.monotonic() < deadline, "a new request did not start after Stop"
        time.sleep(0.1)
    page.locator("#stop").click()


def test_train_live_runs_to_the_end(page):
    page.get_by_role("tab", name="Train live").click()
    # Pasted text, so the test needs neither the Time Machine nor a network.
    page.get_by_label("My text (pasted or uploaded)").check()
    page.get_by_label("Your text").fill(corpus_text(6_000))
    for slider, value in (("live-hidden", "16"), ("live-epochs", "2")):
        number = page.locator(f"#{slider} input[type=number]")
        number.fill(value)
        number.press("Enter")
    page.locator("#live-train").click()
    page.get_by_text("Finished.").wait_for(timeout=90_000)
    assert "Epoch 2 of 2" in page.locator("#live-status").inner_text()
    page.locator("#live-plot img").wait_for(timeout=10_000)
    page.screenshot(path=str(SCREENSHOTS / "train_live_done.png"), full_page=True)


@pytest.mark.parametrize("tab", ["Next character", "Training curves", "Score your text",
                                 "Train live"])
def test_tabs_render(page, tab):
    page.get_by_role("tab", name=tab).click()
    if tab == "Score your text":
        # The table shows its real column names before the first score.
        headers = page.locator("#score-table thead th")
        headers.first.wait_for(timeout=10_000)
        assert "perplexity trained" in headers.all_inner_texts()
        page.get_by_role("button", name="Score").click()
        page.locator("#heatmap span[title]").first.wait_for(timeout=30_000)
    if tab == "Next character":
        page.locator("#next-plot img").wait_for(timeout=30_000)
    if tab == "Training curves":
        page.locator("#curves img").wait_for(timeout=30_000)
    time.sleep(0.5)
    assert page.locator(".toast-body.error").count() == 0
    name = tab.lower().replace(" ", "_")
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
