"""Tests of the running app through its HTTP API: `python app.py` on a free loopback port."""

import concurrent.futures
import json
import os
import pathlib
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

# gradio_client sends usage statistics unless both of these are set.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import httpx  # noqa: E402
import pytest  # noqa: E402
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from model.config import ModelConfig, TrainConfig  # noqa: E402
from model.data import build_corpus  # noqa: E402
from model.trainer import fit  # noqa: E402

PROJECT = pathlib.Path(__file__).resolve().parents[1]
TIME_MACHINE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "timemachine.txt"
STARTUP_TIMEOUT = 180  # seconds; startup compiles every model on a shared 2-core CPU


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
    """Start `python app.py` from another folder, wait until it responds, return it and its URL."""
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
    workdir = tmp_path_factory.mktemp("workdir")
    process, url = start_app(checkpoints, workdir)
    yield url
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def client(server):
    return Client(server, analytics_enabled=False, verbose=False)


def generate(client, **overrides):
    settings = dict(prefix="the time traveller", cell="lstm", num_chars=60, temperature=0.0,
                    top_k=0, seed=0)
    settings.update(overrides)
    return client.predict(**settings, api_name="/generate")


def call_raw(server: str, body: str) -> str:
    """POST a raw JSON body to the generate endpoint and return the result stream's text."""
    base = f"{server}gradio_api/call/generate"
    response = httpx.post(base, content=body, headers={"content-type": "application/json"})
    response.raise_for_status()
    return httpx.get(f"{base}/{response.json()['event_id']}", timeout=60).text


def test_greedy_request_is_deterministic(client):
    first = generate(client)
    assert generate(client) == first
    assert len(first) == 2
    assert first[1].startswith("the time traveller")
    assert len(first[1]) == len("the time traveller") + 60


def test_untrained_and_trained_differ(client):
    untrained, trained = generate(client, temperature=1.0, seed=4)
    assert untrained != trained


def test_defaults_and_label(client):
    untrained, trained = client.predict(cell="RNN", api_name="/generate")
    assert trained.startswith("the time traveller")
    assert len(trained) == len("the time traveller") + 200


def test_cleared_prefix_and_odd_prefix(client):
    _, trained = generate(client, prefix=None, num_chars=10)
    assert len(trained) == 10
    _, trained = generate(client, prefix="THE Time, 1895 🚀", num_chars=10)
    assert trained.startswith("the time ")


@pytest.mark.parametrize("settings, words", [
    (dict(temperature=5.0), "temperature must be a number from 0 to 2, got 5.0"),
    (dict(temperature=-1), "temperature"), (dict(num_chars=0), "length"),
    (dict(num_chars=2.5), "whole number"), (dict(num_chars=10**7), "length"),
    (dict(top_k=500), "top-k"), (dict(seed=-1), "seed"), (dict(cell="tcn"), "unknown model"),
    (dict(prefix=["a", "list"]), "prefix must be text"),
])
def test_bad_inputs_get_clear_error_and_server_keeps_serving(client, settings, words):
    with pytest.raises(AppError, match=words):
        generate(client, **settings)
    assert generate(client, num_chars=5)[1] == generate(client, num_chars=60)[1][:23]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_temperature_rejected(server, value):
    body = f'{{"data": ["the", "lstm", 20, {value}, 0, 0]}}'
    events = call_raw(server, body)
    assert events.startswith("event: error")
    error = json.loads(events.split("data: ", 1)[1])["error"]
    assert error.startswith("temperature must be a number from 0 to 2, got ")


def test_same_text_under_concurrent_load(client):
    settings = [dict(temperature=1.0, seed=seed, cell=cell) for seed in range(3)
                for cell in ("rnn", "lstm")]
    expected = [generate(client, **setting) for setting in settings]
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda setting: generate(client, **setting), settings))
    assert results == expected


def test_other_endpoints(client):
    table, heatmap, note = client.predict("the time machine", "lstm", api_name="/score")
    assert [row[0] for row in table["data"]] == ["RNN", "LSTM"]
    assert heatmap.count("<span") == len("the time machine")
    plot = client.predict("lstm", "the time", 0.5, 3, api_name="/next_character")
    assert plot["type"] == "matplotlib"


def test_api_lists_only_public_endpoints(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) == {"/generate", "/score", "/next_character"}
