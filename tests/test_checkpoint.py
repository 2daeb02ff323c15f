import dataclasses
import json
import logging
import shutil

import jax
import numpy as np
import pytest

from model import checkpoint, pretrained
from model.config import ModelConfig, TrainConfig
from model.data import build_corpus
from model.trainer import fit

TRAIN = TrainConfig(batch_size=4, num_steps=16, optimizer="adam", lr=1e-2, epochs=2,
                    steps_per_call=4, sample_every=0)


@pytest.fixture(scope="module")
def run(tmp_path_factory, corpus_text):
    directory = tmp_path_factory.mktemp("ckpt") / "lstm"
    corpus = build_corpus(corpus_text[:6_000], "d2l", "full", TRAIN.num_steps)
    config = ModelConfig(vocab_size=len(corpus.vocab), cell="lstm", num_hiddens=8)
    result = fit(config, TRAIN, corpus, checkpoint_dir=directory, progress=False)
    return directory, config, corpus, result


def test_round_trip_is_exact(run):
    directory, config, corpus, result = run
    loaded = pretrained.load(directory, which="latest")
    for saved, restored in zip(jax.tree_util.tree_leaves(result.state.params),
                               jax.tree_util.tree_leaves(loaded.params)):
        np.testing.assert_array_equal(np.asarray(saved), np.asarray(restored))
    assert loaded.model_config == config
    assert loaded.train_config == TRAIN
    assert loaded.vocab == corpus.vocab


def test_restored_arrays_live_on_cpu(run):
    loaded = pretrained.load(run[0])
    devices = {leaf.devices().pop().platform for leaf in jax.tree_util.tree_leaves(loaded.params)}
    assert devices == {"cpu"}


def test_metadata_stands_alone(run):
    directory = run[0]
    step = max(int(path.name) for path in directory.iterdir() if path.name.isdigit())
    meta = json.loads((directory / str(step) / "meta" / "metadata").read_text())
    assert meta["model_config"]["cell"] == "lstm"
    assert meta["train_config"]["batch_size"] == 4
    assert "".join(meta["vocab"]) == "".join(run[2].vocab.chars)
    assert meta["preprocess"] == "d2l"
    assert [record["epoch"] for record in meta["history"]] == [1, 2]
    assert {"train_perplexity", "val_perplexity", "wall_time"} <= set(meta["history"][0])
    assert meta["versions"]["jax"] == jax.__version__
    assert meta["finished"] is True


def noisy_run(tmp_path, corpus_text, epochs=6, stop_after=None):
    """Train with a high constant learning rate, so validation perplexity goes up and down."""
    corpus = build_corpus(corpus_text[:6_000], "d2l", "full", 16)
    config = ModelConfig(vocab_size=len(corpus.vocab), cell="rnn", num_hiddens=8)
    train = dataclasses.replace(TRAIN, epochs=epochs, lr=0.2, lr_schedule="constant")
    history = []

    def record(entry):
        history.append(entry)
        if stop_after is not None and entry["epoch"] > stop_after:
            raise KeyboardInterrupt

    try:
        fit(config, train, corpus, checkpoint_dir=tmp_path, progress=False, on_epoch=record)
    except KeyboardInterrupt:
        pass  # the interrupted epoch was recorded, so it is saved as the latest checkpoint
    return config, history


def test_keeps_latest_and_best_during_training(tmp_path, corpus_text):
    _, history = noisy_run(tmp_path, corpus_text, epochs=8, stop_after=6)
    best_record = min(history, key=lambda record: record["val_perplexity"])
    manager = checkpoint.open_manager(tmp_path, read_only=True)
    assert manager.latest_step() == history[-1]["step"]
    assert manager.best_step() == best_record["step"]
    assert sorted(manager.all_steps()) == sorted({history[-1]["step"], best_record["step"]})


def test_finished_run_keeps_one_checkpoint_with_best_params(tmp_path, corpus_text):
    from model.train_lib import evaluate

    config, history = noisy_run(tmp_path, corpus_text, epochs=6)
    best_index = min(range(len(history)), key=lambda i: history[i]["val_perplexity"])
    assert best_index < len(history) - 1  # the last epoch is worse, so its params are replaced
    manager = checkpoint.open_manager(tmp_path, read_only=True)
    assert manager.all_steps() == [history[-1]["step"]]
    meta = checkpoint.restore_meta(manager, manager.latest_step())
    assert meta["finished"] is True
    assert meta["params_epoch"] == best_index + 1
    assert len(meta["history"]) == 6

    loaded = pretrained.load(tmp_path)
    corpus = build_corpus(corpus_text[:6_000], "d2l", "full", 16)
    score = evaluate(loaded.params, config, corpus.val, "full", 16)
    assert score.perplexity == pytest.approx(history[best_index]["val_perplexity"], rel=1e-5)


def test_untrained_params_are_the_initialization(run):
    from model.rnn import init_params
    loaded = pretrained.load(run[0])
    expected = init_params(loaded.model_config, loaded.train_config.seed)
    for a, b in zip(jax.tree_util.tree_leaves(expected),
                    jax.tree_util.tree_leaves(loaded.untrained_params())):
        np.testing.assert_array_equal(a, b)


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="not found"):
        pretrained.load(tmp_path / "nothing-here")


def test_empty_directory_is_named(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="no complete checkpoint"):
        pretrained.load(tmp_path)


def test_writable_open_removes_unfinished_saves(run, tmp_path, caplog):
    directory = tmp_path / "lstm"
    shutil.copytree(run[0], directory)
    (step,) = [int(path.name) for path in directory.iterdir() if path.name.isdigit()]
    unfinished = directory / f"{step + 16}{checkpoint.TMP_DIR_SUFFIX}"
    (unfinished / "state").mkdir(parents=True)

    manager = checkpoint.open_manager(directory, read_only=True)
    assert manager.all_steps() == [step]
    manager.close()
    assert unfinished.is_dir()  # reading leaves it for the next writer
    assert pretrained.load(directory).step == step

    with caplog.at_level(logging.WARNING, logger="model.checkpoint"):
        checkpoint.open_manager(directory).close()
    assert not unfinished.exists()
    assert [record.getMessage() for record in caplog.records
            if record.name == "model.checkpoint"] == [
        f"removing {unfinished}: a save that never finished, left by a process that stopped "
        "during it"]
    assert sorted(path.name for path in directory.iterdir()) == [str(step)]


def test_only_unfinished_save_is_named(tmp_path):
    (tmp_path / f"32{checkpoint.TMP_DIR_SUFFIX}").mkdir()
    with pytest.raises(checkpoint.CheckpointError,
                       match=f"it contains only the unfinished save 32{checkpoint.TMP_DIR_SUFFIX}, "
                             "which is never loaded"):
        pretrained.load(tmp_path)


def test_save_rejects_non_finite(tmp_path):
    manager = checkpoint.open_manager(tmp_path)
    with pytest.raises(ValueError, match="val perplexity nan"):
        checkpoint.save(manager, 1, {"x": np.zeros(2)}, {}, float("nan"))
    manager.close()
