"""Tests of the running app through its HTTP API: `python app.py` on a free loopback port."""

import concurrent.futures
import os

# gradio_client sends usage statistics unless both of these are set.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import pytest  # noqa: E402
from gradio_client import Client  # noqa: E402

from app_fixtures import running_app  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_app(tmp_path_factory) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return Client(server, analytics_enabled=False, verbose=False)


def generate(client, **overrides):
    settings = dict(prefix="the time traveller", cell="lstm", num_chars=60, temperature=0.0,
                    top_k=0, seed=0)
    settings.update(overrides)
    return client.predict(**settings, api_name="/generate")


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


def test_same_text_under_concurrent_load(client):
    settings = [dict(temperature=1.0, seed=seed, cell=cell) for seed in range(3)
                for cell in ("rnn", "lstm")]
    expected = [generate(client, **setting) for setting in settings]
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda setting: generate(client, **setting), settings))
    assert results == expected


def test_other_endpoints(client):
    table, heatmap, note = client.predict("the time machine", "lstm", api_name="/score")
    assert table["headers"] == ["model", "characters scored", "perplexity untrained",
                                "perplexity trained", "bits/char untrained", "bits/char trained"]
    assert [row[0] for row in table["data"]] == ["RNN", "LSTM"]
    assert [row[1] for row in table["data"]] == [15, 15]
    assert heatmap.count("<span") == len("the time machine")
    assert note == ""
    result = client.predict("lstm", "The Time", 0.5, 3, api_name="/next_character")
    assert result["prefix"] == "the time"
    assert result["headers"] == ["network", "char", "probability", "after_settings"]
    assert [row[0] for row in result["data"]] == ["untrained"] * 12 + ["trained"] * 12
    trained = [row for row in result["data"] if row[0] == "trained"]
    assert sum(row[3] for row in trained[:3]) == pytest.approx(1.0, abs=1e-5)
    assert [row[3] for row in trained[3:]] == [0.0] * 9


def test_score_and_next_character_accept_labels(client):
    assert client.predict("the time", "LSTM", api_name="/score") == client.predict(
        "the time", "lstm", api_name="/score")
    assert client.predict(" Rnn ", "the", 0.5, 3, api_name="/next_character") == client.predict(
        "rnn", "the", 0.5, 3, api_name="/next_character")


def test_api_lists_only_public_endpoints(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) == {"/generate", "/score", "/next_character"}
