import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from model.batching import sequential_batches
from model.config import ModelConfig, TrainConfig
from model.data import build_corpus
from model.rnn import zero_carry
from model.train_lib import (NonFiniteLossError, create_state, evaluate, make_optimizer,
                             make_train_chunk)
from model.trainer import ConfigMismatchError, fit

TINY_TRAIN = TrainConfig(batch_size=4, num_steps=16, optimizer="adam", lr=1e-2,
                         lr_schedule="constant", epochs=3, steps_per_call=4, sample_every=0)


@pytest.fixture(scope="module")
def corpus(corpus_text):
    return build_corpus(corpus_text[:6_000], "d2l", "full", TINY_TRAIN.num_steps)


@pytest.fixture(scope="module")
def tiny_model(corpus):
    return ModelConfig(vocab_size=len(corpus.vocab), cell="gru", num_hiddens=8)


def run_steps(model_config, train_config, batches, num_steps):
    tx = make_optimizer(train_config, steps_per_epoch=10)
    state = create_state(model_config, train_config, tx)
    chunk = make_train_chunk(model_config, tx, carry_over=True)
    carry = zero_carry(model_config, train_config.batch_size)
    before = jax.tree_util.tree_map(np.array, state.params)
    state, carry, metrics = chunk(state, carry, batches.inputs[:num_steps],
                                  batches.targets[:num_steps], batches.mask[:num_steps])
    return before, state, metrics


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm", "scratch"])
def test_one_step_changes_every_parameter(cell, corpus):
    config = ModelConfig(vocab_size=len(corpus.vocab), cell=cell, num_hiddens=8)
    batches = sequential_batches(corpus.train, 4, 16)
    before, state, _ = run_steps(config, TINY_TRAIN, batches, 1)
    changed = jax.tree_util.tree_map(lambda old, new: bool(np.any(old != np.asarray(new))),
                                     before, state.params)
    assert all(jax.tree_util.tree_leaves(changed)), changed
    assert int(state.step) == 1


def test_overfits_a_tiny_string():
    text = "hello world " * 40
    corpus = build_corpus(text, "raw", "full", 12)
    config = ModelConfig(vocab_size=len(corpus.vocab), cell="lstm", num_hiddens=32)
    train = dataclasses.replace(TINY_TRAIN, batch_size=2, num_steps=12, lr=2e-2)
    batches = sequential_batches(corpus.train, 2, 12)
    inputs = np.concatenate([batches.inputs] * 10)[:60]  # (60, B, T), repeated passes
    tx = make_optimizer(train, steps_per_epoch=10)
    state = create_state(config, train, tx)
    chunk = make_train_chunk(config, tx, carry_over=False)
    carry = zero_carry(config, 2)
    targets = np.concatenate([batches.targets] * 10)[:60]
    state, carry, metrics = chunk(state, carry, inputs, targets, np.ones_like(inputs, np.float32))
    final_loss = float(metrics["loss_sum"][-1] / metrics["count"][-1])
    assert final_loss < 0.1, final_loss


def test_clipping_bounds_global_norm():
    grads = {"a": jnp.full((3,), 10.0), "b": jnp.full((2, 2), -10.0)}
    clip = optax.clip_by_global_norm(1.0)
    clipped, _ = clip.update(grads, clip.init(grads))
    assert float(optax.tree.norm(grads)) > 1.0
    assert float(optax.tree.norm(clipped)) == pytest.approx(1.0, rel=1e-5)


def test_optimizer_chain_clips_before_update():
    config = dataclasses.replace(TINY_TRAIN, optimizer="sgd", lr=1.0, grad_clip=0.5)
    tx = make_optimizer(config, steps_per_epoch=1)
    params = {"w": jnp.zeros(4)}
    updates, _ = tx.update({"w": jnp.full(4, 100.0)}, tx.init(params), params)
    assert float(optax.tree.norm(updates)) == pytest.approx(0.5, rel=1e-5)


def test_fit_is_deterministic(corpus, tiny_model):
    config = dataclasses.replace(TINY_TRAIN, epochs=1)
    first = fit(tiny_model, config, corpus, progress=False)
    second = fit(tiny_model, config, corpus, progress=False)
    for a, b in zip(jax.tree_util.tree_leaves(first.state.params),
                    jax.tree_util.tree_leaves(second.state.params)):
        np.testing.assert_array_equal(a, b)
    assert first.history[0]["val_perplexity"] == second.history[0]["val_perplexity"]


def test_resume_matches_uninterrupted_run(tmp_path, corpus, tiny_model):
    straight = fit(tiny_model, TINY_TRAIN, corpus, checkpoint_dir=tmp_path / "straight",
                   progress=False)

    def interrupt_after_second_epoch(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(tiny_model, TINY_TRAIN, corpus, checkpoint_dir=tmp_path / "resumed", progress=False,
            on_epoch=interrupt_after_second_epoch)
    resumed = fit(tiny_model, TINY_TRAIN, corpus, checkpoint_dir=tmp_path / "resumed",
                  resume=True, progress=False)

    assert len(resumed.history) == 3
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    for a, b in zip(jax.tree_util.tree_leaves(straight.state.params),
                    jax.tree_util.tree_leaves(resumed.state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert resumed.history[-1]["val_perplexity"] == pytest.approx(
        straight.history[-1]["val_perplexity"], rel=1e-5)


def test_rerunning_finished_run_says_so(tmp_path, corpus, tiny_model, caplog):
    config = dataclasses.replace(TINY_TRAIN, epochs=1)
    fit(tiny_model, config, corpus, checkpoint_dir=tmp_path, progress=False)
    with caplog.at_level("INFO"):
        again = fit(tiny_model, config, corpus, checkpoint_dir=tmp_path, resume=True,
                    progress=False)
    assert again.finished
    assert "already finished" in caplog.text


def test_resume_with_other_cell_names_both(tmp_path, corpus, tiny_model):
    config = dataclasses.replace(TINY_TRAIN, epochs=1)
    fit(tiny_model, config, corpus, checkpoint_dir=tmp_path, progress=False)
    other = dataclasses.replace(tiny_model, cell="lstm", num_hiddens=12)
    with pytest.raises(ConfigMismatchError, match="cell: checkpoint 'gru' vs requested 'lstm'"):
        fit(other, config, corpus, checkpoint_dir=tmp_path, resume=True, progress=False)


def test_non_finite_loss_stops_without_saving(tmp_path, corpus, tiny_model):
    # A huge learning rate without clipping drives the loss to inf or NaN.
    config = dataclasses.replace(TINY_TRAIN, optimizer="sgd", lr=1e30, grad_clip=0.0, epochs=2)
    with pytest.raises(NonFiniteLossError, match="--lr"):
        fit(tiny_model, config, corpus, checkpoint_dir=tmp_path, progress=False)
    assert not any(path.name.isdigit() for path in tmp_path.iterdir())


def test_evaluate_stream_and_windows(corpus, tiny_model):
    from model.rnn import init_params
    params = init_params(tiny_model, 0)
    stream = evaluate(params, tiny_model, corpus.val, "full", 16)
    assert stream.num_chars == len(corpus.val) - 1
    # An untrained model is close to uniform over the vocabulary.
    assert stream.perplexity == pytest.approx(len(corpus.vocab), rel=0.3)
    assert stream.bits_per_char == pytest.approx(np.log2(stream.perplexity))


def test_interrupt_mid_epoch_saves_and_resumes(tmp_path, corpus, tiny_model, monkeypatch):
    import model.trainer as trainer

    straight = fit(tiny_model, TINY_TRAIN, corpus, checkpoint_dir=tmp_path / "straight",
                   progress=False)
    real_make_train_chunk = trainer.make_train_chunk
    interrupt_at = straight.history[0]["step"] + 8  # eight steps into the second epoch

    def make_interrupting_chunk(*args, **kwargs):
        chunk = real_make_train_chunk(*args, **kwargs)

        def interrupting(*chunk_args):
            if int(chunk_args[0].step) >= interrupt_at:
                raise KeyboardInterrupt
            return chunk(*chunk_args)

        return interrupting

    monkeypatch.setattr(trainer, "make_train_chunk", make_interrupting_chunk)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_model, TINY_TRAIN, corpus, checkpoint_dir=tmp_path / "resumed", progress=False)
    monkeypatch.setattr(trainer, "make_train_chunk", real_make_train_chunk)

    from model import checkpoint
    manager = checkpoint.open_manager(tmp_path / "resumed", read_only=True)
    saved = checkpoint.restore_meta(manager, manager.latest_step())
    assert len(saved["history"]) == 1
    assert not saved["finished"]
    assert manager.latest_step() == interrupt_at
    manager.close()

    resumed = fit(tiny_model, TINY_TRAIN, corpus, checkpoint_dir=tmp_path / "resumed",
                  resume=True, progress=False)
    # The interrupted epoch's training loss is carried over, so its record matches too.
    assert resumed.history[1]["train_perplexity"] == pytest.approx(
        straight.history[1]["train_perplexity"], rel=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(straight.state.params),
                    jax.tree_util.tree_leaves(resumed.state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
