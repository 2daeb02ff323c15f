"""The equations of Flax's SimpleCell, GRUCell and LSTMCell over their own parameters.

The fast layers of `model.rnn` and the fast steps of `model.sampling` compute
the cells from the parameters that `nn.scan` over the Flax cells creates, so
they read the same weights as the reference layers. A step is

    x_proj = x_t W_i + b_i      (row `id` of W_i for a one-hot x_t)
    h_proj = (h_{t-1} * mask) W_h + b_h
    state_t = CELL_UPDATES[cell](x_proj, h_proj, state_{t-1})

with the gates side by side in the last axis. Flax stores one kernel per gate,
and `group_kernels` concatenates them into products of a chosen number of
gates each (see `RNNLM.gates_per_product` for why not all of them at once).

Shapes: B = batch, D = input features, H = hidden units, G = H (rnn),
3H (gru) or 4H (lstm).
"""

import jax
import jax.numpy as jnp

# Per cell: the Dense layers of the Flax cell that read the input and those that read
# h_{t-1}, each as (name, has_bias), in the order their outputs are concatenated.
# The names and bias flags are those of flax 0.12's SimpleCell, GRUCell and LSTMCell.
INPUT_DENSES = {
    "rnn": (("i", True),),
    "gru": (("ir", True), ("iz", True), ("in", True)),
    "lstm": (("ii", False), ("if", False), ("ig", False), ("io", False)),
}
HIDDEN_DENSES = {
    "rnn": (("h", False),),
    "gru": (("hr", False), ("hz", False), ("hn", True)),
    "lstm": (("hi", True), ("hf", True), ("hg", True), ("ho", True)),
}


def group_kernels(layer_params: dict, denses, gates_per_product: int) -> list:
    """Concatenate per-gate kernels into [(kernel (D, k H), bias (k H,)), ...], k gates each.

    A Dense without a bias contributes zeros, so every group has a bias.
    """
    groups = []
    for begin in range(0, len(denses), gates_per_product):
        kernels, biases = [], []
        for name, has_bias in denses[begin:begin + gates_per_product]:
            kernel = layer_params[name]["kernel"]  # (D, H)
            kernels.append(kernel)
            biases.append(layer_params[name]["bias"] if has_bias
                          else jnp.zeros(kernel.shape[-1], kernel.dtype))
        groups.append((jnp.concatenate(kernels, axis=1), jnp.concatenate(biases)))
    return groups


def project(inputs, groups):
    """Return inputs (B, D) times every group's kernel plus its bias, concatenated: (B, G)."""
    outputs = [inputs @ kernel + bias for kernel, bias in groups]
    return outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=-1)


def gather_project(ids, groups, scale=None):
    """Return one_hot(ids) (B, V) times the groups' kernels plus bias, as a row gather: (B, G).

    `scale` (B,) multiplies each one-hot row first (input dropout), None means ones.
    """
    outputs = []
    for kernel, bias in groups:
        rows = jnp.take(kernel, ids, axis=0)  # (B, k H)
        outputs.append((rows if scale is None else rows * scale[:, None]) + bias)
    return outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=-1)


def hidden(state):
    """Return h from a cell state: the state itself, or the second entry of the LSTM's (c, h)."""
    return state[1] if isinstance(state, tuple) else state


def _rnn_update(x_proj, h_proj, h):
    del h  # the tanh RNN reads h_{t-1} only through h_proj
    return jnp.tanh(x_proj + h_proj)


def _gru_update(x_proj, h_proj, h):
    # Same as nn.GRUCell: the reset gate scales the h-side product of the candidate only,
    # and the update gate mixes in the unmasked h_{t-1}.
    x_r, x_z, x_n = jnp.split(x_proj, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(h_proj, 3, axis=-1)
    r = jax.nn.sigmoid(x_r + h_r)
    z = jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * h_n)
    return (1.0 - z) * n + z * h


def _lstm_update(x_proj, h_proj, state):
    c, _ = state
    i, f, g, o = jnp.split(x_proj + h_proj, 4, axis=-1)
    new_c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    new_h = jax.nn.sigmoid(o) * jnp.tanh(new_c)
    return new_c, new_h


# (x_proj (B, G), h_proj (B, G), state) -> new state, each as the Flax cell computes it.
CELL_UPDATES = {"rnn": _rnn_update, "gru": _gru_update, "lstm": _lstm_update}
