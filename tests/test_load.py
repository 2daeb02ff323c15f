"""Load test of `python app.py` on a loopback port: a small, bounded run of benchmarks/load_test.py.

8 gradio_client users request 100 characters each while 2 users cancel their
requests, a greedy request is repeated, and (when Chromium is installed) 2 browser
pages start and stop streams. Then 40 requests are submitted at once.
"""

import sys

import pytest

from app_fixtures import PROJECT, build_checkpoints, start_app

sys.path.insert(0, str(PROJECT))

from benchmarks import load_test  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from gradio_client.utils import QueueError  # noqa: E402

HAS_CHROMIUM = load_test.chromium_path() is not None
SETTINGS = load_test.LoadSettings(users=8, requests_per_user=1, num_chars=100, cancel_users=2,
                                  stream_users=2 if HAS_CHROMIUM else 0, stream_cycles=1,
                                  probes=2, burst=40, timeout=60.0)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Run the load once against a tiny LSTM checkpoint; return the checked report."""
    checkpoints = build_checkpoints(tmp_path_factory.mktemp("checkpoints"), cells=("lstm",))
    workdir = tmp_path_factory.mktemp("workdir")
    process, url = start_app(checkpoints, workdir)
    try:
        result = load_test.run_load(url, SETTINGS, process.pid)
    finally:
        load_test.stop_server(process)
    return load_test.add_checks(result, SETTINGS, (workdir / "app.log").read_text())


def test_requests_complete_or_are_busy(report):
    assert report["problems"] == []
    outcomes = report["outcomes"]
    assert outcomes["generate"] == {load_test.COMPLETED: SETTINGS.users}
    assert sum(outcomes["burst"].values()) == SETTINGS.burst
    assert sum(outcomes["cancel"].values()) == SETTINGS.cancel_users


def test_greedy_text_same_under_load(report):
    assert report["greedy"]["different"] == 0
    assert report["greedy"]["equal"] == SETTINGS.probes


def test_server_log_has_no_errors(report):
    assert report["log_problems"] == []


def test_memory_stays_bounded(report):
    memory = report["memory_mb"]
    assert memory["samples"] > 0
    assert memory["growth"] <= SETTINGS.max_rss_growth_mb


@pytest.mark.skipif(not HAS_CHROMIUM, reason="needs playwright and Debian's chromium "
                                              "(apt-get install chromium)")
def test_stopped_streams_stop(report):
    assert report["outcomes"]["stream"] == {load_test.CANCELLED: SETTINGS.stream_users}


@pytest.mark.parametrize("url", ["http://localhost:7860/", "http://10.0.0.1:7860/",
                                 "https://127.0.0.1:7860/", "http://127.0.0.1.example.com/",
                                 "http://[::1]:7860/"])
def test_url_must_be_loopback(url):
    with pytest.raises(ValueError, match="127.0.0.1"):
        load_test.check_loopback_url(url)


def test_queue_full_counts_as_busy():
    assert load_test.classify_error(QueueError("Queue is full! Please try again."))[0] == \
        load_test.REJECTED
    assert load_test.classify_error(AppError("model failed"))[0] == load_test.ERROR
