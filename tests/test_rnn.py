import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.config import ModelConfig
from model.rnn import CELL_CLASSES, build_model, count_params, init_params, zero_carry
from model.scratch import params_from_rnn

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
