"""Robustness of the app: bad input on every endpoint, broken checkpoints, and file access.

One checkpoint folder serves every test here: a tiny d2l LSTM, a tiny LSTM trained
on raw dialogue, a copy of the LSTM with an unfinished save beside it, and six
broken runs. The handlers are called directly on it, and one `python app.py`,
started from another folder, serves it on a loopback port.
"""

import json
import logging
import os
import pathlib
import shutil

# gradio_client sends usage statistics unless both of these are set.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import gradio as gr  # noqa: E402
import httpx  # noqa: E402
import pytest  # noqa: E402
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

import app  # noqa: E402
from app_fixtures import (PROJECT, build_checkpoints, build_raw_checkpoint, start_app,  # noqa: E402
                          stop_app)
from webapp.generate_tab import (generate_texts, prefix_after_model_change,  # noqa: E402
                                 stream_generate)
from webapp.limits import MAX_REQUEST_BYTES, RAW_DEFAULT_PREFIX  # noqa: E402
from webapp.models import ROOT, checkpoint_label, checkpoint_root, load_models  # noqa: E402
from webapp.next_char_tab import next_char_api  # noqa: E402
from webapp.score_tab import score_api  # noqa: E402
from webapp.train_tab import LIVE_UPLOAD_BYTES, MY_TEXT, stream_train  # noqa: E402

TEMPERATURE = "temperature must be 0 (greedy) or a number from 0.01 to 2, got {}"
LENGTH = "length must be a whole number from 1 to 1000, got {}"
TOP_K = "top-k must be a whole number from 0 to 100, got {}"
SEED = "seed must be a whole number from 0 to 4294967295, got {}"
UNKNOWN_MODEL = ("unknown model {}. Choose one of: lstm (LSTM), lstm-interrupted "
                 "(LSTM · Interrupted), lstm-shakespeare (LSTM · Shakespeare)")
TOO_SHORT = ("the text must contain at least 2 characters that LSTM knows after d2l "
             "preprocessing, got {}. Paste some English prose")
BROKEN = ("empty", "garbled-meta", "mismatched", "no-meta", "tmp-only", "truncated")

# Arguments of a valid request to each endpoint, in the order of its API signature.
VALID = {
    "generate": dict(prefix="the time", cell="lstm", num_chars=20, temperature=0.0, top_k=0,
                     seed=0),
    "next_character": dict(cell="lstm", prefix="the time", temperature=0.8, top_k=0),
    "score": dict(text="the time machine", cell="lstm"),
}

# (endpoint, the argument that is wrong, its value, the exact error message)
BAD_INPUTS = [
    ("generate", "temperature", -1, TEMPERATURE.format("-1")),
    ("generate", "temperature", 1e-30, TEMPERATURE.format("1e-30")),
    ("generate", "temperature", 2.5, TEMPERATURE.format("2.5")),
    ("generate", "temperature", 1e308, TEMPERATURE.format("1e+308")),
    ("generate", "temperature", None, TEMPERATURE.format("None")),
    ("generate", "temperature", "0.5", TEMPERATURE.format("'0.5'")),
    ("generate", "temperature", True, TEMPERATURE.format("True")),
    ("generate", "num_chars", 0, LENGTH.format("0")),
    ("generate", "num_chars", -5, LENGTH.format("-5")),
    ("generate", "num_chars", 2.5, LENGTH.format("2.5")),
    ("generate", "num_chars", 10**9, LENGTH.format("1000000000")),
    ("generate", "num_chars", None, LENGTH.format("None")),
    ("generate", "top_k", -1, TOP_K.format("-1")),
    ("generate", "top_k", 101, TOP_K.format("101")),
    ("generate", "top_k", 1.5, TOP_K.format("1.5")),
    ("generate", "seed", -1, SEED.format("-1")),
    ("generate", "seed", 2**32, SEED.format("4294967296")),
    ("generate", "seed", 0.5, SEED.format("0.5")),
    ("generate", "cell", "tcn", UNKNOWN_MODEL.format("'tcn'")),
    ("generate", "cell", "truncated", UNKNOWN_MODEL.format("'truncated'")),
    ("generate", "cell", None, UNKNOWN_MODEL.format("None")),
    ("generate", "cell", "", UNKNOWN_MODEL.format("''")),
    ("generate", "prefix", 123, "prefix must be text, got int 123"),
    ("generate", "prefix", ["a", "b"], "prefix must be text, got list ['a', 'b']"),
    ("generate", "prefix", ["x" * 100], "prefix must be text, got list ['" + "x" * 57 + "…"),
    ("next_character", "temperature", -1, TEMPERATURE.format("-1")),
    ("next_character", "temperature", 1e-30, TEMPERATURE.format("1e-30")),
    ("next_character", "temperature", 5.0, TEMPERATURE.format("5.0")),
    ("next_character", "temperature", None, TEMPERATURE.format("None")),
    ("next_character", "top_k", -1, TOP_K.format("-1")),
    ("next_character", "top_k", 300, TOP_K.format("300")),
    ("next_character", "top_k", 1.5, TOP_K.format("1.5")),
    ("next_character", "cell", "tcn", UNKNOWN_MODEL.format("'tcn'")),
    ("next_character", "cell", "empty", UNKNOWN_MODEL.format("'empty'")),
    ("next_character", "prefix", 123, "prefix must be text, got int 123"),
    ("score", "cell", "tcn", UNKNOWN_MODEL.format("'tcn'")),
    ("score", "cell", None, UNKNOWN_MODEL.format("None")),
    ("score", "text", 123, "text to score must be text, got int 123"),
    ("score", "text", None, TOO_SHORT.format(0)),
    ("score", "text", "", TOO_SHORT.format(0)),
    ("score", "text", " \t\n ", TOO_SHORT.format(1)),
    ("score", "text", "🚀🚀", TOO_SHORT.format(1)),
    ("score", "text", "\x00", TOO_SHORT.format(1)),
]

# (case, prefix, what the d2l LSTM saw, what the raw-text LSTM saw)
PREFIXES = [
    ("none", None, "", ""),
    ("empty", "", "", ""),
    ("whitespace", " \t\n  ", " ", " \n  "),
    ("100k", "the " * 25_000, "the " * 500, "the " * 500),
    ("other-scripts", "время 時間", " ", " "),
    ("emoji", "🚀 the", " the", " the"),
    ("control", "\x07\x1b[31mred", " mred", "mred"),
    ("nul", "the\x00time", "the time", "thetime"),
]
PREFIX_IDS = [case[0] for case in PREFIXES]


def case_id(case) -> str:
    endpoint, name, value, _ = case
    return f"{endpoint}-{name}-{str(value)[:12]}"


# ---------------------------------------------------------------------------- fixtures


def saved_step(directory: pathlib.Path) -> int:
    """Return the step of the only complete checkpoint in a run folder."""
    (step,) = [int(path.name) for path in directory.iterdir() if path.name.isdigit()]
    return step


def break_checkpoints(root: pathlib.Path, source: pathlib.Path) -> int:
    """Write broken and interrupted copies of the run in `source` under `root`; return its step."""
    step = saved_step(source)
    step_dir = source / str(step)

    def copy(name: str) -> pathlib.Path:
        shutil.copytree(source, root / name)
        return root / name / step_dir.name

    (root / "empty").mkdir()
    for path in (copy("truncated") / "state").rglob("*"):
        if path.is_file() and path.parent.name == "d":  # array data files
            path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    (copy("no-meta") / "meta" / "metadata").unlink()
    (copy("garbled-meta") / "meta" / "metadata").write_text('{"model_config": {"cell": ')
    meta_file = copy("mismatched") / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["model_config"]["num_hiddens"] = 32  # the arrays have 16 units
    meta_file.write_text(json.dumps(meta))
    tmp_only = copy("tmp-only")
    tmp_only.rename(tmp_only.with_name(f"{step}.orbax-checkpoint-tmp-17"))

    # A save of a later step killed before Orbax renamed its temporary folder.
    interrupted = copy("lstm-interrupted")
    shutil.copytree(interrupted, interrupted.with_name(f"{step + 100}.orbax-checkpoint-tmp-7"))
    return step


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The checkpoint folder and the step of its LSTM: 3 runs that load and 6 that do not."""
    root = build_checkpoints(tmp_path_factory.mktemp("checkpoints"), cells=("lstm",))
    build_raw_checkpoint(root / "lstm-shakespeare")
    step = break_checkpoints(root, root / "lstm")
    return root, step


class MessageList(logging.Handler):
    """A logging handler that keeps the formatted message of every record."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def loaded(checkpoints):
    """Load the folder once; return the models and the messages that the "app" logger wrote."""
    handler = MessageList()
    logger = logging.getLogger("app")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        return load_models(checkpoints[0]), handler.messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture(scope="module")
def models(loaded):
    return loaded[0]


@pytest.fixture(scope="module")
def load_log(loaded):
    return loaded[1]


@pytest.fixture(scope="module")
def server(checkpoints, tmp_path_factory):
    """`python <project>/app.py` started in an empty folder; yields (URL, that folder)."""
    workdir = tmp_path_factory.mktemp("workdir")
    process, url = start_app(checkpoints[0], workdir)
    try:
        yield url, workdir
    finally:
        stop_app(process)


@pytest.fixture(scope="module")
def client(server):
    return Client(server[0], analytics_enabled=False, verbose=False)


def call_handler(models, endpoint: str, arguments: dict):
    """Call the handler behind `endpoint` directly, as the server does."""
    if endpoint == "generate":
        return generate_texts(models, **arguments)
    if endpoint == "next_character":
        return next_char_api(models, **arguments)
    return score_api(models, **arguments)


def first_update(models, arguments: dict):
    """Return the first page update of the Generate tab's stream for API-style arguments."""
    return next(stream_generate(models, arguments["cell"], arguments["prefix"],
                                arguments["num_chars"], arguments["temperature"],
                                arguments["top_k"], arguments["seed"], "instant", True))


def call_raw(server_url: str, endpoint: str, body: str) -> tuple[str, object]:
    """POST a raw JSON body to an endpoint; return the result's event name and its data."""
    base = f"{server_url}gradio_api/call/{endpoint}"
    response = httpx.post(base, content=body, headers={"content-type": "application/json"})
    response.raise_for_status()
    events = httpx.get(f"{base}/{response.json()['event_id']}", timeout=60).text
    name = events.split("\n", 1)[0].removeprefix("event: ")
    return name, json.loads(events.split("data: ", 1)[1].split("\n", 1)[0])


# ---------------------------------------------------------------------------- handlers, directly


@pytest.mark.parametrize("case", BAD_INPUTS, ids=case_id)
def test_handler_rejects_bad_input(models, case):
    endpoint, name, value, message = case
    arguments = dict(VALID[endpoint], **{name: value})
    with pytest.raises(gr.Error) as raised:
        call_handler(models, endpoint, arguments)
    assert raised.value.message == message


@pytest.mark.parametrize("case", [case for case in BAD_INPUTS if case[0] == "generate"],
                         ids=case_id)
def test_stream_rejects_before_any_text(models, case):
    _, name, value, message = case
    with pytest.raises(gr.Error) as raised:
        first_update(models, dict(VALID["generate"], **{name: value}))
    assert raised.value.message == message


@pytest.mark.parametrize("name, value, printed", [
    ("temperature", float("nan"), "nan"), ("temperature", float("inf"), "inf"),
    ("temperature", float("-inf"), "-inf"),
])
def test_handler_rejects_non_finite_temperature(models, name, value, printed):
    for endpoint in ("generate", "next_character"):
        with pytest.raises(gr.Error) as raised:
            call_handler(models, endpoint, dict(VALID[endpoint], **{name: value}))
        assert raised.value.message == TEMPERATURE.format(printed)


@pytest.mark.parametrize("name, message", [
    ("num_chars", LENGTH.format("nan")), ("top_k", TOP_K.format("nan")),
    ("seed", SEED.format("nan")),
])
def test_handler_rejects_nan_integers(models, name, message):
    with pytest.raises(gr.Error) as raised:
        call_handler(models, "generate", dict(VALID["generate"], **{name: float("nan")}))
    assert raised.value.message == message


@pytest.mark.parametrize("cell", ["lstm", "lstm-shakespeare"])
@pytest.mark.parametrize("case, prefix, seen_d2l, seen_raw", PREFIXES, ids=PREFIX_IDS)
def test_handler_normalizes_prefix(models, cell, case, prefix, seen_d2l, seen_raw):
    seen = seen_raw if cell == "lstm-shakespeare" else seen_d2l
    arguments = dict(VALID["generate"], prefix=prefix, cell=cell)
    untrained, trained = call_handler(models, "generate", arguments)
    assert trained[:len(seen)] == seen
    assert len(trained) == len(seen) + 20
    assert untrained[:len(seen)] == seen
    assert len(untrained) == len(seen) + 20
    table = call_handler(models, "next_character", dict(VALID["next_character"], prefix=prefix,
                                                         cell=cell))
    assert table["prefix"] == seen
    assert len(table["data"]) == 24


@pytest.mark.parametrize("cell, prefix, note", [
    ("lstm", None, "nothing is left, so the models start from a fresh line (they are primed "
                   "with ' ')"),
    ("lstm", "the " * 25_000, "only its last 2,000 characters were kept (98,000 cut from the "
                              "start)"),
    ("lstm", "🚀 the", "d2l preprocessing lowercased the letters and turned every run of other "
                      "characters (digits, punctuation, line breaks) into one space"),
    ("lstm-shakespeare", "the\x00time 🚀", "characters the model does not know were removed: "
                                            "'\\x00' '🚀'"),
    ("lstm-shakespeare", "", "nothing is left, so the models start from a fresh line (they are "
                             "primed with '\\n')"),
])
def test_stream_note_shows_normalization(models, cell, prefix, note):
    update = first_update(models, dict(VALID["generate"], cell=cell, prefix=prefix))
    assert update[0] == ("<b>The models saw the grey prefix in the panels, not your input:</b> "
                         f"{note}.")


def test_score_normalizations_are_noted(models):
    table, _, note = score_api(models, "the " * 25_000, "lstm")
    assert note == "Only the first 10,000 of 100,000 characters were scored."
    assert table["data"][0][:2] == ["LSTM", 9_999]
    table, heatmap, note = score_api(models, "ROMEO:\nthe 🚀 time", "lstm-shakespeare")
    assert note == "Characters LSTM · Shakespeare does not know were left out: '🚀'."
    assert heatmap.count("<span") == len("ROMEO:\nthe  time")


@pytest.mark.parametrize("settings, message", [
    (dict(text=None), "the training text has 0 characters after d2l preprocessing, but at least "
                      "2,000 are needed"),
    (dict(text=" \t\n " * 1_000), "the training text has 1 character after d2l preprocessing, "
                                  "but at least 2,000 are needed"),
    (dict(text="🚀" * 3_000), "the training text has 1 character after d2l preprocessing, but "
                             "at least 2,000 are needed"),
    (dict(text="ab\x00" * 1_000, preprocess_mode="raw"),
     "the training text contains NUL characters, so it looks binary. Paste or upload plain "
     "text"),
    (dict(text=123), "training text must be text, got int 123"),
    (dict(num_hiddens=float("nan")), "hidden size must be a whole number from 16 to 128, got nan"),
    (dict(epochs=10**9), "epochs must be a whole number from 1 to 20, got 1000000000"),
    (dict(cell=None), "cell must be one of ('rnn', 'gru', 'lstm'), got None"),
])
def test_live_training_rejects_bad_input(settings, message):
    arguments = dict(source=MY_TEXT, text="the time machine " * 200, upload=None, cell="rnn",
                     num_hiddens=16, epochs=1, preprocess_mode="d2l")
    arguments.update(settings)
    with pytest.raises(gr.Error) as raised:
        next(stream_train(**arguments))
    assert raised.value.message == message


# ---------------------------------------------------------------------------- labels and prefixes


@pytest.mark.parametrize("name, cell, label", [
    ("lstm", "lstm", "LSTM"), ("rnn-d2l", "rnn", "RNN · d2l"),
    ("lstm-shakespeare", "lstm", "LSTM · Shakespeare"), ("my-text-gru", "gru", "GRU · My text"),
    ("broken", "lstm", "broken"),
])
def test_checkpoint_label(name, cell, label):
    assert checkpoint_label(name, cell) == label


def test_raw_model_label_and_default_prefix(models):
    raw, d2l = models.entries["lstm-shakespeare"], models.entries["lstm"]
    assert raw.label == "LSTM · Shakespeare"
    assert raw.default_prefix == RAW_DEFAULT_PREFIX == "ROMEO:\n"
    assert d2l.default_prefix == "the time traveller"
    assert ("LSTM · Shakespeare", "lstm-shakespeare") in models.choices()


def test_model_change_swaps_default_prefix_only(models):
    raw, d2l = models.entries["lstm-shakespeare"], models.entries["lstm"]
    assert prefix_after_model_change(models, raw, "the time traveller") == "ROMEO:\n"
    assert prefix_after_model_change(models, d2l, "ROMEO:\n") == "the time traveller"
    assert prefix_after_model_change(models, raw, "ROMEO:\n") is None
    assert prefix_after_model_change(models, raw, "my own words") is None


def test_labels_accepted_by_every_endpoint(models):
    expected = call_handler(models, "generate", VALID["generate"])
    assert call_handler(models, "generate", dict(VALID["generate"], cell=" lstm ")) == expected
    assert call_handler(models, "generate", dict(VALID["generate"], cell="LSTM")) == expected
    raw = call_handler(models, "next_character", dict(VALID["next_character"],
                                                      cell="lstm · SHAKESPEARE"))
    assert raw == call_handler(models, "next_character", dict(VALID["next_character"],
                                                              cell="lstm-shakespeare"))
    table, _, _ = call_handler(models, "score", dict(VALID["score"], cell="Lstm"))
    assert [row[0] for row in table["data"]] == ["LSTM", "LSTM · Interrupted",
                                                 "LSTM · Shakespeare"]


# ---------------------------------------------------------------------------- broken checkpoints


def failure_prefixes(step: int, folder=lambda name: name) -> dict:
    """Return how the error of each broken run starts; Orbax writes the rest, which varies.

    `folder(name)` is how the message names the run folder: the page shows its name
    and the log its full path.
    """
    return {
        "empty": f"CheckpointError: no complete checkpoint in {folder('empty')}",
        "garbled-meta": f"CheckpointError: could not read the metadata of step {step} in "
                        f"{folder('garbled-meta')}",
        "mismatched": f"CheckpointError: could not restore step {step} from "
                      f"{folder('mismatched')}",
        "no-meta": f"CheckpointError: could not read the metadata of step {step} in "
                   f"{folder('no-meta')}",
        "tmp-only": f"CheckpointError: no complete checkpoint in {folder('tmp-only')}",
        "truncated": f"CheckpointError: could not restore step {step} from "
                     f"{folder('truncated')}",
    }


def test_broken_checkpoints_reported_by_name(models, checkpoints):
    root, step = checkpoints
    assert list(models.entries) == ["lstm", "lstm-interrupted", "lstm-shakespeare"]
    assert list(models.failures) == list(BROKEN)
    for name, prefix in failure_prefixes(step).items():
        assert models.failures[name].startswith(prefix), models.failures[name]
        assert len(models.failures[name]) <= 300
        assert str(root) not in models.failures[name]  # the page shows no server paths


def test_load_log_names_steps_and_failures(load_log, checkpoints):
    root, step = checkpoints
    raw_step = saved_step(root / "lstm-shakespeare")
    assert (f"checkpoint lstm-interrupted: ignoring {step + 100}.orbax-checkpoint-tmp-7, a save "
            "that did not finish") in load_log
    loaded = [message for message in load_log if message.startswith("loaded ")]
    assert [message.split(":")[0] for message in loaded] == [
        f"loaded lstm (LSTM) from step {step} (latest step {step})",
        f"loaded lstm-interrupted (LSTM · Interrupted) from step {step} (latest step {step})",
        f"loaded lstm-shakespeare (LSTM · Shakespeare) from step {raw_step} (latest step "
        f"{raw_step})"]
    for name, prefix in failure_prefixes(step, lambda name: str(root / name)).items():
        assert any(message.startswith(f"checkpoint {name} failed to load and is not served: "
                                      f"{prefix}") for message in load_log), name


def test_page_names_unavailable_models(models, checkpoints):
    banner = app.failures_banner(models)
    assert banner.startswith("⚠️ Not available, because their checkpoints failed to load: "
                             "**empty** (CheckpointError: no complete checkpoint in empty")
    assert banner.endswith(". The other models work as usual.")
    for name, prefix in failure_prefixes(checkpoints[1]).items():
        assert f"**{name}** ({prefix}" in banner
    assert "lstm-interrupted" not in banner
    demo = app.build_demo(models)
    shown = [block.value for block in demo.blocks.values()
             if getattr(block, "elem_id", None) == "unavailable"]
    assert shown == [banner]


# ---------------------------------------------------------------------------- paths and launch


def test_paths_do_not_depend_on_working_folder(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CONCISE_RNN_CHECKPOINTS", raising=False)
    assert checkpoint_root(None) == PROJECT / "checkpoints"
    assert checkpoint_root("runs") == PROJECT / "runs"
    assert ROOT == PROJECT


def test_launch_defaults(monkeypatch, tmp_path):
    launched = {}
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: None)
    monkeypatch.setattr(gr.Blocks, "launch", lambda demo, **kwargs: launched.update(kwargs))
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    app.main(["--checkpoint-root", str(tmp_path)])
    assert launched["share"] is False
    assert launched["server_name"] == "127.0.0.1"
    assert launched["max_file_size"] == LIVE_UPLOAD_BYTES == 1_000_000
    (middleware,) = launched["app_kwargs"]["middleware"]
    assert middleware.kwargs == {"max_bytes": MAX_REQUEST_BYTES}


# ---------------------------------------------------------------------------- the running server


def test_server_runs_from_another_folder(server):
    _, workdir = server
    assert not (workdir / "app.py").exists()
    log = (workdir / "app.log").read_text()
    assert "loaded lstm-shakespeare (LSTM · Shakespeare) from step " in log


def test_server_reports_broken_checkpoints(server, checkpoints):
    url, workdir = server
    root, step = checkpoints
    log = (workdir / "app.log").read_text()
    for name, prefix in failure_prefixes(step, lambda name: str(root / name)).items():
        assert f"ERROR app: checkpoint {name} failed to load and is not served: {prefix}" in log
    assert "WARNING app: checkpoint lstm-interrupted: ignoring " in log
    config = httpx.get(f"{url}config").json()
    (banner,) = [component["props"]["value"] for component in config["components"]
                 if component["props"].get("elem_id") == "unavailable"]
    for name, prefix in failure_prefixes(checkpoints[1]).items():
        assert f"**{name}** ({prefix}" in banner


@pytest.mark.parametrize("case", BAD_INPUTS, ids=case_id)
def test_api_rejects_bad_input(client, case):
    endpoint, name, value, message = case
    arguments = dict(VALID[endpoint], **{name: value})
    with pytest.raises(AppError) as raised:
        client.predict(**arguments, api_name=f"/{endpoint}")
    assert str(raised.value) == message


@pytest.mark.parametrize("endpoint, data, message", [
    ("generate", '["the", "lstm", 20, NaN, 0, 0]', TEMPERATURE.format("nan")),
    ("generate", '["the", "lstm", 20, Infinity, 0, 0]', TEMPERATURE.format("inf")),
    ("generate", '["the", "lstm", 20, -Infinity, 0, 0]', TEMPERATURE.format("-inf")),
    ("generate", '["the", "lstm", NaN, 0, 0, 0]', LENGTH.format("nan")),
    ("generate", '["the", "lstm", Infinity, 0, 0, 0]', LENGTH.format("inf")),
    ("generate", '["the", "lstm", 20, 0, -Infinity, 0]', TOP_K.format("-inf")),
    ("generate", '["the", "lstm", 20, 0, 0, NaN]', SEED.format("nan")),
    ("next_character", '["lstm", "the", NaN, 0]', TEMPERATURE.format("nan")),
    ("next_character", '["lstm", "the", 0.5, Infinity]', TOP_K.format("inf")),
    ("score", '["the time", NaN]', UNKNOWN_MODEL.format("nan")),
])
def test_api_rejects_non_finite_numbers(server, endpoint, data, message):
    event, payload = call_raw(server[0], endpoint, f'{{"data": {data}}}')
    assert event == "error"
    assert payload["error"] == message


def test_api_drops_lone_surrogate(server):
    event, payload = call_raw(server[0], "generate",
                              '{"data": ["\\ud800the", "lstm-shakespeare", 5, 0, 0, 0]}')
    assert event == "complete"
    assert [text[:3] for text in payload] == ["the", "the"]
    assert [len(text) for text in payload] == [8, 8]


# The 100k prefix runs on one model here: each model compiles its longest bucket on first use.
@pytest.mark.parametrize("cell, case, prefix, seen_d2l, seen_raw", [
    pytest.param(cell, *case, id=f"{case[0]}-{cell}") for case in PREFIXES
    for cell in ("lstm", "lstm-shakespeare") if (case[0], cell) != ("100k", "lstm")])
def test_api_normalizes_prefix(client, models, cell, case, prefix, seen_d2l, seen_raw):
    arguments = dict(VALID["generate"], prefix=prefix, cell=cell)
    assert list(client.predict(**arguments, api_name="/generate")) == list(
        call_handler(models, "generate", arguments))
    table = client.predict(**dict(VALID["next_character"], prefix=prefix, cell=cell),
                           api_name="/next_character")
    assert table["prefix"] == (seen_raw if cell == "lstm-shakespeare" else seen_d2l)


def test_api_accepts_labels_on_every_endpoint(client):
    expected = client.predict(**VALID["generate"], api_name="/generate")
    assert client.predict(**dict(VALID["generate"], cell="LSTM"), api_name="/generate") == expected
    table = client.predict(cell="LSTM · Shakespeare", prefix="ROMEO:\n", temperature=0,
                           top_k=0, api_name="/next_character")
    assert table["prefix"] == "ROMEO:\n"
    scores, _, _ = client.predict(text="the time machine", cell="lstm · shakespeare",
                                  api_name="/score")
    assert scores["headers"][:2] == ["model", "characters scored"]
    assert [row[0] for row in scores["data"]] == ["LSTM", "LSTM · Interrupted",
                                                  "LSTM · Shakespeare"]


def test_server_keeps_serving_without_tracebacks(server, client, models):
    """Runs after the bad-input tables: the server still serves, and logged no traceback."""
    expected = call_handler(models, "generate", VALID["generate"])
    assert list(client.predict(**VALID["generate"], api_name="/generate")) == list(expected)
    log = (server[1] / "app.log").read_text()
    assert "Traceback" not in log
    assert "INFO app: rejected request: " + TOP_K.format("300") in log


# ---------------------------------------------------------------------------- files and sizes


@pytest.mark.parametrize("path, status, secret", [
    ("gradio_api/file=/etc/passwd", 403, "root:"),
    ("gradio_api/file=/proc/self/environ", 403, "CONCISE_RNN_CHECKPOINTS"),
    (f"gradio_api/file={PROJECT / 'app.py'}", 403, "import gradio"),
    (f"gradio_api/file={PROJECT / 'README.md'}", 403, "Concise RNN"),
    ("gradio_api/file=app.log", 403, "Running on"),
    ("gradio_api/file=..%2F..%2F..%2F..%2Fetc%2Fpasswd", 403, "root:"),
    ("file=/etc/passwd", 404, "root:"),
    (f"file={PROJECT / 'app.py'}", 404, "import gradio"),
    ("static/%2e%2e/%2e%2e/app.py", 403, "import gradio"),
    ("assets/%2e%2e%2f%2e%2e%2fapp.py", 403, "import gradio"),
])
def test_server_rejects_file_requests(server, path, status, secret):
    response = httpx.get(server[0] + path)
    assert response.status_code == status
    assert secret not in response.text


def test_server_rejects_checkpoint_files(server, checkpoints):
    root, step = checkpoints
    for path in (root / "lstm" / str(step) / "meta" / "metadata",
                 root / "lstm" / str(step) / "state" / "manifest.ocdbt",
                 server[1] / "app.log"):
        response = httpx.get(f"{server[0]}gradio_api/file={path}")
        assert response.status_code == 403, path
        assert response.text == f'{{"detail":"File not allowed: {path}."}}'


def test_upload_size_is_capped(server):
    url = f"{server[0]}gradio_api/upload"
    response = httpx.post(url, files={"files": ("big.txt", b"a" * (LIVE_UPLOAD_BYTES + 1),
                                                "text/plain")})
    assert response.status_code == 413
    assert response.text == "File size exceeded maximum allowed size of 1000000 bytes."
    response = httpx.post(url, files={"files": ("small.txt", b"the time machine",
                                                "text/plain")})
    assert response.status_code == 200
    assert response.json()[0].endswith("/small.txt")


def test_request_body_size_is_capped(server):
    body = b'{"data": ["' + b"a" * MAX_REQUEST_BYTES + b'"]}'
    response = httpx.post(f"{server[0]}gradio_api/call/generate", content=body,
                          headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.text == (f"The request body has {len(body)} bytes, but the limit is "
                             "4,194,304.\n")
