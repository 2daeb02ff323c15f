"""Tests of the running app through its HTTP API: `python app.py` on a free loopback port."""

import concurrent.futures
import json
import os

# gradio_client sends usage statistics unless both of these are set.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import httpx  # noqa: E402
import pytest  # noqa: E402
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

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
