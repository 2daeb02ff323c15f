"""Tests of the app's functions in app.py and webapp/, called directly on tiny checkpoints."""

import json
import math
import os
import subprocess
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import app  # noqa: E402
from app_fixtures import PROJECT, build_checkpoints, corpus_text  # noqa: E402
from model.data import preprocess  # noqa: E402
from model.sampling import PreparedPrefix  # noqa: E402
from model.train_lib import evaluate  # noqa: E402
from webapp.curves_tab import curves_figure, format_duration, model_card  # noqa: E402
from model.app_support import CHUNK_CHARS  # noqa: E402
from model.sampling import sample  # noqa: E402
from webapp import generate_tab  # noqa: E402
from webapp.generate_tab import (char_spans, describe_prefix, generate_texts,  # noqa: E402
                                 prefix_html, reveal_due, sample_pieces, stream_generate,
                                 text_stats)
from webapp.limits import MAX_CHARS, MAX_PREFIX_CHARS, MAX_SCORE_CHARS, MAX_TOP_K  # noqa: E402
from webapp.models import CHECKPOINT_ENV, ROOT, checkpoint_root, load_models  # noqa: E402
from webapp.next_char_tab import apply_sampling, next_char_table, next_char_view  # noqa: E402
from webapp.score_tab import SCORE_COLUMNS, score_text  # noqa: E402
from webapp.train_tab import MY_TEXT, stream_train  # noqa: E402
from webapp.validation import GenerateRequest, check_entry, check_generate  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = build_checkpoints(tmp_path_factory.mktemp("checkpoints"))
    (root / "broken").mkdir()
    (root / "broken" / "notes.txt").write_text("not a checkpoint")
    (root / "lstm.previous").mkdir()  # an older run that train.py kept, which the app skips
    return load_models(root)


def generate(models, **overrides):
    settings = dict(prefix="the time traveller", cell="lstm", num_chars=40, temperature=0.0,
                    top_k=0, seed=0)
    settings.update(overrides)
    return generate_texts(models, **settings)


def last(iterator):
    value = None
    for value in iterator:
        pass
    return value


# ---------------------------------------------------------------------------- import and loading


def test_import_does_not_launch_or_import_torch():
    code = "import sys, app; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "False"
    assert "Running on" not in result.stdout + result.stderr


def test_load_models_skips_broken_checkpoint(models):
    assert list(models.entries) == ["rnn", "lstm"]
    assert "broken" in models.failures
    assert "lstm.previous" not in models.failures


def test_load_models_empty_root(tmp_path):
    models = load_models(tmp_path / "missing")
    assert models.entries == {}
    with pytest.raises(gr.Error, match="no trained checkpoint"):
        check_entry(models, "lstm")


def test_build_demo_without_models(tmp_path):
    demo = app.build_demo(load_models(tmp_path))
    assert "generate" in {fn.api_name for fn in demo.fns.values()}


def test_checkpoint_root_sources(monkeypatch, tmp_path):
    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    assert checkpoint_root(None) == ROOT / "checkpoints"
    monkeypatch.setenv(CHECKPOINT_ENV, str(tmp_path))
    assert checkpoint_root(None) == tmp_path
    assert checkpoint_root("runs") == ROOT / "runs"


def test_build_demo_has_generate_endpoint(models):
    demo = app.build_demo(models)
    api_names = {fn.api_name for fn in demo.fns.values()}
    assert {"generate", "score", "next_character"} <= api_names


def test_score_table_has_headers_before_first_use(models):
    demo = app.build_demo(models)
    (table,) = [block for block in demo.blocks.values()
                if getattr(block, "elem_id", None) == "score-table"]
    assert table.postprocess(table.value).headers == SCORE_COLUMNS
    assert SCORE_COLUMNS == ["model", "characters scored", "perplexity untrained",
                             "perplexity trained", "bits/char untrained", "bits/char trained"]


# ---------------------------------------------------------------------------- generation


def test_greedy_generation_is_deterministic(models):
    assert generate(models) == generate(models)


def test_untrained_and_trained_differ(models):
    untrained, trained = generate(models, num_chars=100)
    assert untrained != trained
    assert untrained.startswith("the time traveller")
    assert trained.startswith("the time traveller")


def test_generation_length_and_seed(models):
    _, trained = generate(models, temperature=1.0, num_chars=25, seed=7)
    assert len(trained) == len("the time traveller") + 25
    _, other_seed = generate(models, temperature=1.0, num_chars=25, seed=8)
    assert trained != other_seed


def test_shorter_request_is_start_of_longer(models):
    _, short = generate(models, temperature=1.0, num_chars=30, seed=3)
    _, long = generate(models, temperature=1.0, num_chars=300, seed=3)
    assert long.startswith(short)


def test_cell_accepts_label_any_case(models):
    assert generate(models, cell="LSTM") == generate(models, cell="lstm")
    assert generate(models, cell=" Rnn ") == generate(models, cell="rnn")


@pytest.mark.parametrize("prefix, seen", [
    (None, ""), ("", ""), ("THE TIME", "the time"), ("in 1895 it was", "in it was"),
    ("hello 🚀 world", "hello world"), ("🚀🚀", " "),
])
def test_odd_prefixes(models, prefix, seen):
    untrained, trained = generate(models, prefix=prefix, num_chars=20)
    assert trained.startswith(seen)
    assert len(trained) == len(seen) + 20
    assert len(untrained) == len(seen) + 20


def test_very_long_prefix_is_cut(models):
    prefix = "a" * 50 + "the time traveller " * 200
    request = check_generate(models, "lstm", prefix, 10, 0.0, 0, 0)
    assert len(request.prefix) == MAX_PREFIX_CHARS
    assert request.cut == len(prefix) - MAX_PREFIX_CHARS
    _, trained = generate(models, prefix=prefix, num_chars=10)
    assert len(trained) == MAX_PREFIX_CHARS + 10


def test_prefix_note_explains_changes(models):
    stream = stream_generate(models, "lstm", "In 1895, THE Time 🚀", 10, 0.0, 0, 0,
                             "instant", True)
    note = next(stream)[0]
    assert "d2l preprocessing" in note
    assert "🚀" not in note  # the emoji is lost by preprocessing, not by the vocabulary
    assert next(stream_generate(models, "lstm", "the time", 10, 0.0, 0, 0, "instant",
                                True))[0] == ""
    empty_note = next(stream_generate(models, "lstm", None, 10, 0.0, 0, 0, "instant",
                                      True))[0]
    assert "fresh line" in empty_note


def test_prefix_note_lists_removed_characters(models):
    entry = models.entries["lstm"]
    request = GenerateRequest(entry, "abc", 0, 10, 0.0, 0, 0)
    prepared = PreparedPrefix(text="ab", removed="c", primer="ab")
    assert "'c'" in describe_prefix(request, prepared)


# ---------------------------------------------------------------------------- input checks


@pytest.mark.parametrize("field, value, words", [
    ("temperature", float("nan"), "nan"), ("temperature", float("inf"), "inf"),
    ("temperature", -0.5, "-0.5"), ("temperature", 2.5, "2.5"), ("temperature", "hot", "'hot'"),
    ("num_chars", 0, "length"), ("num_chars", -3, "-3"), ("num_chars", 2.5, "2.5"),
    ("num_chars", 10**9, "1000000000"), ("num_chars", None, "None"),
    ("top_k", -1, "top-k"), ("top_k", MAX_TOP_K + 1, "top-k"), ("top_k", 1.5, "1.5"),
    ("seed", -1, "seed"), ("seed", 2**32, "seed"), ("seed", True, "True"),
    ("cell", "tcn", "tcn"), ("cell", None, "None"), ("prefix", 123, "123"),
])
def test_bad_generate_inputs_raise(models, field, value, words):
    with pytest.raises(gr.Error) as raised:
        generate(models, **{field: value})
    assert words in raised.value.message


def test_error_message_gives_range(models):
    with pytest.raises(gr.Error) as raised:
        generate(models, temperature=float("nan"))
    assert raised.value.message == ("temperature must be 0 (greedy) or a number from 0.01 to 2, "
                                    "got nan")


def test_integral_float_inputs_accepted(models):
    assert generate(models, num_chars=40.0, seed=0.0) == generate(models)


def test_unknown_speed_raises(models):
    with pytest.raises(gr.Error, match="speed"):
        next(stream_generate(models, "lstm", "the", 10, 0.0, 0, 0, "warp", True))


# ---------------------------------------------------------------------------- streaming


def test_instant_stream_shows_everything(models):
    updates = list(stream_generate(models, "lstm", "the time", 30, 1.0, 0, 5, "instant",
                                   True))
    assert len(updates) == 2
    note, _, untrained_html, untrained_stats, _, trained_html, trained_stats = updates[-1]
    assert untrained_html.count('title="p = ') == 30
    assert trained_html.count('title="p = ') == 30
    assert "perplexity" in untrained_stats
    assert "bits per character" in trained_stats


def test_paced_stream_grows_at_the_end(models):
    updates = list(stream_generate(models, "lstm", "the", 40, 1.0, 0, 0,
                                   "fast (100 chars/s)", False))
    assert 3 <= len(updates) <= 41  # the empty panels, at least one partial text, the whole
    for before, after in zip(updates, updates[1:]):
        assert after[2].startswith(before[2])
        assert after[5].startswith(before[5])
    untrained, trained = generate(models, prefix="the", num_chars=40, temperature=1.0)
    assert updates[-1][5] == prefix_html("the") + trained[len("the"):]


@pytest.mark.parametrize("elapsed, due", [(0.0, 1), (0.05, 6), (0.19, 20), (5.0, 20)])
def test_reveal_due_paces_from_the_first_character(elapsed, due):
    assert reveal_due(20, 100, elapsed) == due


def test_instant_reveal_is_due_at_once():
    assert reveal_due(20, None, 0.0) == 20


def test_stream_samples_one_piece_before_the_first_character(models, monkeypatch):
    piece_sizes = []

    def counting_pieces(request, prepared):
        for pair in sample_pieces(request, prepared):
            piece_sizes.append(len(pair[0][0]))
            yield pair

    monkeypatch.setattr(generate_tab, "sample_pieces", counting_pieces)
    stream = stream_generate(models, "lstm", "the", MAX_CHARS, 1.0, 0, 0,
                             "slow (10 chars/s)", True)
    next(stream)  # the empty panels
    first = next(stream)
    assert first[5].count('title="p = ') == 1
    assert piece_sizes == [CHUNK_CHARS]
    stream.close()


def test_app_generation_equals_library_sampling(models):
    pretrained = models.entries["rnn"].pretrained
    expected = sample(pretrained.params, pretrained.model_config, pretrained.vocab,
                      pretrained.preprocess, "the time", CHUNK_CHARS + 9, seed=4,
                      temperature=0.9)
    _, trained = generate(models, cell="rnn", prefix="the time", num_chars=CHUNK_CHARS + 9,
                          temperature=0.9, seed=4)
    assert trained == "the time" + expected.text


def test_stream_matches_api_text(models):
    final = last(stream_generate(models, "rnn", "the time", 50, 0.7, 5, 11, "instant",
                                 False))
    untrained, trained = generate(models, cell="rnn", prefix="the time", num_chars=50,
                                  temperature=0.7, top_k=5, seed=11)
    assert final[2] == prefix_html("the time") + untrained[len("the time"):]
    assert final[5] == prefix_html("the time") + trained[len("the time"):]


def test_html_escapes_characters():
    spans = char_spans("<&>", np.log(np.array([0.01, 0.3, 0.9])), True)
    assert spans[0] == '<span class="p0" title="p = 1.0%">&lt;</span>'
    assert spans[1].startswith('<span class="p2"')
    assert spans[2].startswith('<span class="p4"')
    assert char_spans("<", np.zeros(1), False) == ["&lt;"]


def test_text_stats_values():
    log_probs = np.log(np.full(4, 0.25))
    assert "perplexity **4.00**" in text_stats(log_probs)
    assert "**2.00** bits per character" in text_stats(log_probs)


# ---------------------------------------------------------------------------- next character


def test_next_char_probabilities(models):
    table = next_char_table(models, "lstm", "the time", 1.0, 0)
    assert set(table["network"]) == {"untrained", "trained"}
    for network in ("untrained", "trained"):
        rows = table[table["network"] == network]
        assert len(rows) == 12
        assert rows["probability"].sum() <= 1.0 + 1e-6
        np.testing.assert_allclose(rows["probability"], rows["after_settings"], rtol=1e-5)


def test_next_char_greedy_and_top_k(models):
    greedy = next_char_table(models, "lstm", "the time", 0.0, 0)
    top_one = next_char_table(models, "lstm", "the time", 1.3, 1)
    for table in (greedy, top_one):
        trained = table[table["network"] == "trained"]
        assert trained["after_settings"].iloc[0] == pytest.approx(1.0)
        assert trained["after_settings"].iloc[1:].sum() == pytest.approx(0.0)


def test_apply_sampling_sharpens():
    logits = np.log(np.array([0.5, 0.3, 0.2]))
    cold = apply_sampling(logits, 0.5, 0)
    np.testing.assert_allclose(cold, np.array([25, 9, 4]) / 38, rtol=1e-6)
    np.testing.assert_allclose(apply_sampling(logits, 1.0, 2), [0.625, 0.375, 0.0])


def test_next_char_view_figure(models):
    figure = next_char_view(models, "rnn", "", 0.8, 3)
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 2


# ---------------------------------------------------------------------------- curves and card


def test_curves_figure_has_lines_per_model(models):
    figure = curves_figure(models)
    assert len(figure.axes[0].lines) == 2 * len(models.entries)


def test_model_card(models):
    card = model_card(models)
    assert list(card["model"]) == ["RNN", "LSTM"]
    assert list(card["epochs"]) == [2, 2]
    assert list(card["hidden size"]) == [16, 16]
    assert (card["test perplexity"] == "–").all()
    lstm = models.entries["lstm"]
    assert card["val perplexity"].iloc[1] == f"{lstm.pretrained.meta['best_val_perplexity']:.2f}"


def test_model_card_reads_recorded_test_score(models):
    lstm, rnn = models.entries["lstm"], models.entries["rnn"]
    scores = {"test": {"perplexity": 9.5, "bits_per_char": 3.25, "step": lstm.pretrained.step}}
    (lstm.pretrained.directory / "scores.json").write_text(json.dumps(scores))
    stale = {"test": {"perplexity": 9.0, "bits_per_char": 3.17, "step": rnn.pretrained.step - 1}}
    (rnn.pretrained.directory / "scores.json").write_text(json.dumps(stale))
    try:
        card = model_card(models)
    finally:
        (lstm.pretrained.directory / "scores.json").unlink()
        (rnn.pretrained.directory / "scores.json").unlink()
    assert list(card["test perplexity"]) == ["–", "9.50"]
    assert list(card["test bits/char"]) == ["–", "3.250"]


def test_format_duration():
    assert format_duration(42.4) == "42 s"
    assert format_duration(185) == "3 min 05 s"
    assert format_duration(3720) == "1 h 02 min"


# ---------------------------------------------------------------------------- scoring


def test_score_matches_stream_evaluation(models):
    text = corpus_text()[5_000:7_000]
    table, heatmap, _ = score_text(models, text, "lstm")
    entry = models.entries["lstm"]
    ids = entry.pretrained.vocab.encode(preprocess(text, "d2l"))
    expected = evaluate(entry.pretrained.params, entry.config, ids, "full", 16)
    row = table[table["model"] == "LSTM"].iloc[0]
    assert row["characters scored"] == len(ids) - 1
    # The table shows two decimals.
    assert row["perplexity trained"] == pytest.approx(expected.perplexity, abs=0.006)
    assert row["bits/char trained"] == pytest.approx(expected.bits_per_char, abs=2e-3)
    assert row["perplexity trained"] < row["perplexity untrained"]
    assert heatmap.count("<span") == len(ids)


def test_score_odd_texts(models):
    table, heatmap, note = score_text(models, "The TIME, 1895! 🚀 machine", "rnn")
    assert list(table["model"]) == ["RNN", "LSTM"]
    assert "preprocessing" in note
    assert math.isfinite(table["perplexity trained"].iloc[0])
    for text in (None, "", "🚀", "1"):
        with pytest.raises(gr.Error, match="at least 2 characters"):
            score_text(models, text, "rnn")


def test_score_long_text_is_cut(models):
    table, _, note = score_text(models, "at " * 5_000, "lstm")
    assert "first 10,000" in note
    assert table["characters scored"].iloc[0] == MAX_SCORE_CHARS - 1


# ---------------------------------------------------------------------------- live training


def test_live_training_on_pasted_text():
    updates = list(stream_train(MY_TEXT, corpus_text(6_000), None, "gru", 16, 2, "d2l"))
    status, _, sample = updates[-2]
    assert "Epoch 2 of 2" in status
    assert sample.startswith(preprocess(corpus_text(6_000), "d2l")[:20])
    assert updates[-1][0].startswith("**Finished.**")
    curves = [update[1] for update in updates if isinstance(update[1], Figure)]
    assert len(curves) == 3  # the empty plot, then one per epoch


def test_live_training_time_limit():
    updates = list(stream_train(MY_TEXT, corpus_text(6_000), None, "rnn", 16, 20,
                                "raw", time_limit=0.0))
    assert updates[-1][0].startswith("**Stopped at the time limit of 0 s.**")


def test_live_training_upload(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(corpus_text(3_000), encoding="utf-8")
    updates = stream_train(MY_TEXT, "", str(path), "rnn", 16, 1, "raw")
    assert next(updates)[0].startswith("Compiling")
    updates.close()  # what a Stop press does


@pytest.mark.parametrize("settings, words", [
    (dict(cell="tcn"), "cell"), (dict(num_hiddens=4096), "hidden size"),
    (dict(epochs=0), "epochs"), (dict(epochs=2.5), "epochs"), (dict(text="too short"), "2,000"),
    (dict(source="wikipedia"), "training data"), (dict(preprocess_mode="upper"), "preprocessing"),
])
def test_live_training_bad_inputs(settings, words):
    arguments = dict(source=MY_TEXT, text=corpus_text(3_000), upload=None, cell="rnn",
                     num_hiddens=16, epochs=1, preprocess_mode="d2l")
    arguments.update(settings)
    with pytest.raises(gr.Error, match=words):
        next(stream_train(**arguments))


def test_live_training_rejects_binary_upload(tmp_path):
    path = tmp_path / "data.txt"
    path.write_bytes(b"\x00\x01binary")
    with pytest.raises(gr.Error, match="binary"):
        next(stream_train(MY_TEXT, "", str(path), "rnn", 16, 1, "d2l"))
