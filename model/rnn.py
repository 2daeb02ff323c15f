"""The recurrent language model: one-hot characters -> stacked recurrent layers -> logits.

One scaffold serves every cell: `rnn` (`nn.SimpleCell`, a tanh RNN), `gru`
(`nn.GRUCell`) and `lstm` (`nn.LSTMCell`). Each layer is `nn.scan` over its cell
along the time axis. `scratch` is the same tanh RNN written with explicit
weights (see `model/scratch.py`).

Shapes: B = batch_size, T = num_steps, V = vocab_size, H = num_hiddens.
Arrays are batch-major, (B, T) at every public boundary. The carry is a tuple
with one entry per layer: `h` (B, H) for rnn and gru, `(c, h)` for lstm.
Naming: this project uses `num_hiddens` as the d2l book does. Flax cells call
the same number `features`, and `RNNLM.__call__` is the one place that converts.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from model.config import ModelConfig
from model.scratch import ScratchRNNLM

CELL_CLASSES = {"rnn": nn.SimpleCell, "gru": nn.GRUCell, "lstm": nn.LSTMCell}


def _with_recurrent_mask(base):
    """Subclass a Flax cell so it takes a dropout mask for the hidden state it reads.

    The mask (B, H) is the same at every time step (variational dropout on the
    recurrent connection). The subclass keeps the parameter names of `base`, and
    with a mask of ones it computes exactly what `base` computes.
    """

    class MaskedCell(base):
        def __call__(self, carry, inputs, mask):
            if isinstance(carry, tuple):  # LSTM: (c, h); only h feeds the gates
                masked = (carry[0], carry[1] * mask)
            else:
                masked = carry * mask
            return super().__call__(masked, inputs)

    MaskedCell.__name__ = base.__name__
    return MaskedCell


class MaskedGRUCell(nn.GRUCell):
    """`nn.GRUCell` whose gates read a dropout-masked h_{t-1}, with the same parameters.

    Masking the carry before `nn.GRUCell` would also scale the `z * h` term that
    carries the state forward, and the state would grow step after step. Here only
    the gates see the mask. With a mask of ones this is `nn.GRUCell` exactly.
    """

    @nn.compact
    def __call__(self, carry, inputs, mask):
        h = carry  # (B, H)
        dense_h = functools.partial(nn.Dense, features=h.shape[-1], use_bias=False,
                                    kernel_init=self.recurrent_kernel_init,
                                    bias_init=self.bias_init)
        dense_i = functools.partial(nn.Dense, features=h.shape[-1], use_bias=True,
                                    kernel_init=self.kernel_init, bias_init=self.bias_init)
        dropped = h * mask
        r = self.gate_fn(dense_i(name="ir")(inputs) + dense_h(name="hr")(dropped))
        z = self.gate_fn(dense_i(name="iz")(inputs) + dense_h(name="hz")(dropped))
        n = self.activation_fn(
            dense_i(name="in")(inputs) + r * dense_h(name="hn", use_bias=True)(dropped))
        new_h = (1.0 - z) * n + z * h
        return new_h, new_h


MASKED_CELL_CLASSES = {"rnn": _with_recurrent_mask(nn.SimpleCell), "gru": MaskedGRUCell,
                       "lstm": _with_recurrent_mask(nn.LSTMCell)}


def zero_carry(config: ModelConfig, batch_size: int) -> tuple:
    """Return the all-zeros carry for `batch_size` sequences, one entry per layer."""
    def zeros():
        return jnp.zeros((batch_size, config.num_hiddens), jnp.float32)  # (B, H)

    # Distinct arrays per entry, so a jitted call can donate each buffer once.
    return tuple((zeros(), zeros()) if config.cell == "lstm" else zeros()
                 for _ in range(config.num_layers))


class RNNLM(nn.Module):
    """Character-level language model over a Flax recurrent cell."""

    config: ModelConfig
    unroll: int = 1  # time steps per scan iteration; a speed knob with identical results

    @nn.compact
    def __call__(self, inputs, carry=None, *, deterministic: bool = True):
        """Run the model over a batch of character ids.

        Args:
          inputs: int32 (B, T) character ids.
          carry: the per-layer carry to start from; None means zeros.
          deterministic: False applies dropout (needs a "dropout" rng).

        Returns:
          (carry, logits): the carry after the last step and float32 logits (B, T, V).
        """
        config = self.config
        if carry is None:
            carry = zero_carry(config, inputs.shape[0])
        x = jax.nn.one_hot(inputs, config.vocab_size)  # (B, T, V)
        new_carry = []
        x = nn.Dropout(config.input_dropout)(x, deterministic=deterministic)
        for layer in range(config.num_layers):
            if layer > 0:
                x = nn.Dropout(config.dropout)(x, deterministic=deterministic)
            mask = self.recurrent_mask(inputs.shape[0], deterministic)  # (B, H)
            scan = nn.scan(MASKED_CELL_CLASSES[config.cell], variable_broadcast="params",
                           split_rngs={"params": False}, in_axes=(1, nn.broadcast),
                           out_axes=1, unroll=self.unroll)
            layer_carry, x = scan(features=config.num_hiddens, name=f"layer{layer}")(
                carry[layer], x, mask)  # x: (B, T, H)
            new_carry.append(layer_carry)
        x = nn.Dropout(config.dropout)(x, deterministic=deterministic)
        logits = nn.Dense(config.vocab_size, name="head")(x)  # (B, T, V)
        return tuple(new_carry), logits

    def recurrent_mask(self, batch_size: int, deterministic: bool):
        """Return a scaled keep mask (B, H) for the hidden state, all ones when not dropping."""
        rate = self.config.recurrent_dropout
        shape = (batch_size, self.config.num_hiddens)
        if deterministic or rate == 0.0:
            return jnp.ones(shape, jnp.float32)
        keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - rate, shape)
        return keep.astype(jnp.float32) / (1.0 - rate)


def build_model(config: ModelConfig, unroll: int = 1) -> nn.Module:
    """Return the Flax module for `config.cell`."""
    if config.cell == "scratch":
        return ScratchRNNLM(config)
    return RNNLM(config, unroll=unroll)


def init_params(config: ModelConfig, seed: int) -> dict:
    """Initialize parameters deterministically from `seed` (the untrained model of a run)."""
    model = build_model(config)
    dummy = jnp.zeros((1, 1), jnp.int32)
    return model.init(jax.random.PRNGKey(seed), dummy)["params"]


def count_params(params) -> int:
    return sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
