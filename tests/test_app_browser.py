"""Browser test: headless Chromium drives the running app; screenshots go to screenshots/.

Needs the `chromium` system package and the `playwright` Python package; the
test is skipped when either is missing. Requests to any host other than the
app's loopback address are aborted, so the page cannot reach the internet.
"""

import os
import pathlib
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import pytest  # noqa: E402

from model.config import ModelConfig, TrainConfig  # noqa: E402
from model.data import build_corpus  # noqa: E402
from model.trainer import fit  # noqa: E402

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is not installed: pip install playwright")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip("chromium is not installed: apt-get install -y chromium",
                allow_module_level=True)

PROJECT = pathlib.Path(__file__).resolve().parents[1]
SCREENSHOTS = PROJECT / "screenshots"
TIME_MACHINE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "timemachine.txt"
STARTUP_TIMEOUT = 180  # seconds; startup compiles every model on a shared 2-core CPU
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def corpus_text(num_chars: int = 20_000) -> str:
    """Return the start of the Time Machine if it is beside the project, else generated prose."""
    if TIME_MACHINE.is_file():
        return TIME_MACHINE.read_text(encoding="utf-8")[:num_chars]
    words = "the time traveller machine said we it was a of and to in that his hand".split()
    rng = random.Random(0)
    return " ".join(rng.choice(words) for _ in range(num_chars // 4))


def build_checkpoints(root: pathlib.Path, cells=("rnn", "lstm")) -> pathlib.Path:
    """Train one tiny model per cell for 2 epochs into root/<cell>."""
    corpus = build_corpus(corpus_text(), "d2l", "full", 16)
    train_config = TrainConfig(batch_size=8, num_steps=16, epochs=2, steps_per_call=4, lr=1e-2,
                               sample_every=0)
    for cell in cells:
        model_config = ModelConfig(vocab_size=len(corpus.vocab), cell=cell, num_hiddens=16)
        fit(model_config, train_config, corpus, checkpoint_dir=root / cell, progress=False)
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(checkpoints: pathlib.Path, workdir: pathlib.Path) -> tuple[subprocess.Popen, str]:
    """Start `python app.py` and wait until it responds; return the process and its URL."""
    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
               CONCISE_RNN_CHECKPOINTS=str(checkpoints))
    log_file = open(workdir / "app.log", "w")
    process = subprocess.Popen([sys.executable, str(PROJECT / "app.py")], cwd=workdir, env=env,
                               stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with {process.returncode}:\n"
                               f"{(workdir / 'app.log').read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return process, url
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"app.py did not respond within {STARTUP_TIMEOUT} s:\n"
                       f"{(workdir / 'app.log').read_text()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    checkpoints = build_checkpoints(tmp_path_factory.mktemp("checkpoints"))
    process, url = start_app(checkpoints, tmp_path_factory.mktemp("workdir"))
    yield url
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


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
