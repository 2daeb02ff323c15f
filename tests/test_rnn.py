import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import pretrained
from model.config import ModelConfig
from model import rnn
from model.rnn import (CELL_CLASSES, RNNLM, build_model, count_params, default_gates_per_product,
                       init_params, train_unroll, zero_carry)
from model.scratch import params_from_rnn

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Small distinct sizes, so a swapped axis cannot go unnoticed.
B, T, V, H = 2, 3, 5, 4
INPUTS = jnp.array([[0, 1, 2], [4, 3, 1]], jnp.int32)  # (B, T)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm", "scratch"])
def test_untrained_logits_shape(cell):
    config = ModelConfig(vocab_size=V, cell=cell, num_hiddens=H)
    params = init_params(config, seed=0)
    carry, logits = build_model(config).apply({"params": params}, INPUTS)
    assert logits.shape == (B, T, V)
    assert jax.tree_util.tree_structure(carry) == jax.tree_util.tree_structure(
        zero_carry(config, B))


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_stacked_layers_shapes(cell):
    config = ModelConfig(vocab_size=V, cell=cell, num_hiddens=H, num_layers=3, dropout=0.5)
    params = init_params(config, seed=0)
    assert sorted(params) == ["head", "layer0", "layer1", "layer2"]
    carry, logits = build_model(config).apply(
        {"params": params}, INPUTS, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})
    assert logits.shape == (B, T, V)
    assert len(carry) == 3


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_scan_equals_per_step_loop(cell):
    config = ModelConfig(vocab_size=V, cell=cell, num_hiddens=H)
    params = init_params(config, seed=3)
    _, logits = build_model(config).apply({"params": params}, INPUTS)

    # The same cell and head, called one time step at a time by hand.
    cell_module = CELL_CLASSES[cell](features=H)
    head = nn.Dense(V)
    carry = zero_carry(config, B)[0]
    expected = []
    for t in range(T):
        x_t = jax.nn.one_hot(INPUTS[:, t], V)  # (B, V)
        carry, h_t = cell_module.apply({"params": params["layer0"]}, carry, x_t)
        expected.append(head.apply({"params": params["head"]}, h_t))  # (B, V)
    np.testing.assert_allclose(logits, jnp.stack(expected, axis=1), rtol=1e-5, atol=1e-6)


def test_carry_continues_a_sequence():
    config = ModelConfig(vocab_size=V, cell="lstm", num_hiddens=H)
    params = init_params(config, seed=0)
    model = build_model(config)
    _, whole = model.apply({"params": params}, INPUTS)
    carry, first = model.apply({"params": params}, INPUTS[:, :2])
    _, second = model.apply({"params": params}, INPUTS[:, 2:], carry)
    np.testing.assert_allclose(whole, jnp.concatenate([first, second], axis=1), rtol=1e-5,
                               atol=1e-6)


def test_scratch_equals_rnn_on_same_weights():
    rnn_config = ModelConfig(vocab_size=V, cell="rnn", num_hiddens=H)
    scratch_config = ModelConfig(vocab_size=V, cell="scratch", num_hiddens=H)
    rnn_params = init_params(rnn_config, seed=7)
    _, rnn_logits = build_model(rnn_config).apply({"params": rnn_params}, INPUTS)
    _, scratch_logits = build_model(scratch_config).apply(
        {"params": params_from_rnn(rnn_params)}, INPUTS)
    np.testing.assert_allclose(scratch_logits, rnn_logits, rtol=1e-5, atol=1e-6)


def test_scratch_has_the_book_parameter_names():
    config = ModelConfig(vocab_size=V, cell="scratch", num_hiddens=H)
    params = init_params(config, seed=0)
    shapes = {name: value.shape for name, value in params.items()}
    assert shapes == {"W_xh": (V, H), "W_hh": (H, H), "b_h": (H,), "W_hq": (H, V), "b_q": (V,)}
    assert count_params(params) == V * H + H * H + H + H * V + V


@pytest.mark.parametrize("field, value", [
    ("cell", "transformer"), ("num_hiddens", 0), ("num_layers", 0), ("dropout", 1.0),
    ("vocab_size", 0)])
def test_model_config_rejects_bad_values(field, value):
    kwargs = {"vocab_size": V, field: value}
    with pytest.raises(ValueError, match=field if field != "cell" else "cell must be one of"):
        ModelConfig(**kwargs)


# The fast layers compute the reference layers' mathematics from the same parameters.
STACKED = dict(vocab_size=V, num_hiddens=H, num_layers=2)
LONGER_INPUTS = jnp.array([[0, 1, 2, 3, 4, 0, 1], [4, 3, 2, 2, 1, 0, 3]], jnp.int32)  # (B, 7)
DROPOUT = dict(dropout=0.3, input_dropout=0.2, recurrent_dropout=0.4)


def random_carry(config, seed):
    """A non-zero carry, so the fast layers' handling of the start state is checked too."""
    leaves, treedef = jax.tree_util.tree_flatten(zero_carry(config, B))
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [jax.random.normal(key, leaf.shape) for key, leaf in zip(keys, leaves)])


def loss_and_grads(model, params, carry, deterministic):
    """Return (logits, final carry, gradients) of a loss that reads every logit and the carry."""
    def loss_fn(params):
        new_carry, logits = model.apply({"params": params}, LONGER_INPUTS, carry,
                                        deterministic=deterministic,
                                        rngs={"dropout": jax.random.PRNGKey(11)})
        carry_sum = sum(jnp.sum(leaf) for leaf in jax.tree_util.tree_leaves(new_carry))
        return jnp.sum(jnp.sin(logits)) + carry_sum, (logits, new_carry)

    (_, (logits, new_carry)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return logits, new_carry, grads


def assert_trees_close(actual, expected, what=""):
    assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(expected), what
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(actual),
                                 jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5,
                                   err_msg=f"{what} {jax.tree_util.keystr(path)}")


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_fast_init_equals_reference_init(cell):
    config = ModelConfig(cell=cell, **STACKED)
    reference = init_params(config, seed=4)
    fast = build_model(config).init(jax.random.PRNGKey(4), INPUTS)["params"]
    assert_trees_close(fast, reference)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_fast_logits_and_grads_equal_reference(cell):
    config = ModelConfig(cell=cell, **STACKED)
    params = init_params(config, seed=5)
    carry = random_carry(config, seed=6)
    want = loss_and_grads(build_model(config, reference=True), params, carry, deterministic=True)
    got = loss_and_grads(build_model(config), params, carry, deterministic=True)
    for what, actual, expected in zip(("logits", "carry", "grads"), got, want):
        assert_trees_close(actual, expected, what)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_fast_dropout_masks_equal_reference(cell):
    config = ModelConfig(cell=cell, **STACKED, **DROPOUT)
    params = init_params(config, seed=5)
    carry = random_carry(config, seed=6)
    want = loss_and_grads(build_model(config, reference=True), params, carry, deterministic=False)
    got = loss_and_grads(build_model(config), params, carry, deterministic=False)
    assert_trees_close(got, want)
    # The masks were applied: without dropout the logits differ.
    clean_logits, _, _ = loss_and_grads(build_model(config), params, carry,
                                        deterministic=True)
    assert not np.allclose(got[0], clean_logits, atol=1e-3)


@pytest.mark.parametrize("fields", [dict(unroll=3), dict(unroll=True), dict(gather_input=False),
                                    dict(gates_per_product=1), dict(gates_per_product=2),
                                    dict(gates_per_product=4),
                                    dict(flat_head=False), dict(reference=True, unroll=2)])
def test_speed_options_keep_results(fields):
    config = ModelConfig(cell="lstm", **STACKED, **DROPOUT)
    params = init_params(config, seed=8)
    carry = random_carry(config, seed=9)
    want = loss_and_grads(build_model(config, reference=True), params, carry, deterministic=False)
    got = loss_and_grads(RNNLM(config, **fields), params, carry, deterministic=False)
    assert_trees_close(got, want)


@pytest.mark.parametrize("name", ["rnn", "gru", "lstm", "rnn-d2l", "lstm-shakespeare"])
def test_shipped_checkpoint_same_logits_both_ways(name):
    directory = ROOT / "checkpoints" / name
    if not directory.is_dir():
        pytest.skip(f"{directory} is not in this checkout")
    model = pretrained.load(directory)
    ids = model.vocab.encode("the time traveller for so it will be convenient")[None, :]
    _, want = build_model(model.model_config, reference=True).apply({"params": model.params},
                                                                     ids)
    _, got = build_model(model.model_config).apply({"params": model.params}, ids)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_hiddens, num_layers, num_steps, unroll", [
    (32, 1, 32, True), (64, 2, 32, True), (32, 2, 35, 1), (128, 1, 32, 1), (256, 2, 100, 1)])
def test_train_unroll_fully_unrolls_small_models(num_hiddens, num_layers, num_steps, unroll):
    config = ModelConfig(vocab_size=27, cell="rnn", num_hiddens=num_hiddens,
                         num_layers=num_layers)
    result = train_unroll(config, num_steps)
    assert result == unroll
    assert isinstance(result, bool) == isinstance(unroll, bool)  # True and 1 compare equal


@pytest.mark.parametrize("l2_bytes, cell, num_hiddens, expected", [
    (2 * 1024 ** 2, "lstm", 256, 4), (512 * 1024, "lstm", 256, 1), (2 * 1024 ** 2, "gru", 256, 3),
    (2 * 1024 ** 2, "lstm", 512, 1), (None, "lstm", 16, 1)])
def test_gates_share_a_product_when_kernel_fits_l2(monkeypatch, l2_bytes, cell, num_hiddens,
                                                   expected):
    monkeypatch.setattr(rnn, "l2_cache_bytes", lambda: l2_bytes)
    assert default_gates_per_product.__wrapped__(cell, num_hiddens) == expected


def test_l2_cache_size_is_read_or_unknown():
    size = rnn.l2_cache_bytes()
    assert size is None or size >= 64 * 1024
