"""The recurrent language model: characters -> stacked recurrent layers -> logits.

One scaffold serves every cell: `rnn` (`nn.SimpleCell`, a tanh RNN), `gru`
(`nn.GRUCell`) and `lstm` (`nn.LSTMCell`). `scratch` is the same tanh RNN
written with explicit weights (see `model/scratch.py`).

Each layer runs one of two implementations over the same parameters: the
reference (`nn.scan` over the Flax cell, one-hot input), the textbook form,
and the fast layers (the default), which `RNNLM` describes. tests/test_rnn.py
checks that both give the same logits and gradients.

Shapes: B = batch_size, T = num_steps, V = vocab_size, H = num_hiddens.
Arrays are batch-major, (B, T) at every public boundary. The carry is a tuple
with one entry per layer: `h` (B, H) for rnn and gru, `(c, h)` for lstm.
Naming: this project uses `num_hiddens` as the d2l book does. Flax cells call
the same number `features`, and `RNNLM.__call__` is the one place that converts.
"""

import functools
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.recurrent import DenseParams

from model import cell_math
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


class FastLayer(nn.Module):
    """One recurrent layer over the parameters of a Flax cell, as a plain `lax.scan`.

    The parameters have the names, shapes and initializers of the cell that
    `nn.scan` wraps in the reference layer, so either layer reads the other's
    weights. What differs is how a step is computed; see `RNNLM`.
    """

    cell: str
    features: int  # H
    vocab_size: int  # V, for the first layer's one-hot input
    unroll: int | bool = 1
    gates_per_product: int | None = None  # None: `default_gates_per_product`
    gather_input: bool = True

    @nn.compact
    def __call__(self, carry, inputs, mask, input_scale=None):
        """Run the layer over a sequence.

        Args:
          carry: the layer's carry, (B, H) or (c, h).
          inputs: int32 ids (B, T) for the first layer, else float32 (B, T, D).
          mask: float32 (B, H) recurrent dropout mask, ones when off.
          input_scale: float32 (B, T) input-dropout factor of each character (first layer
            only), or None when input dropout is off.

        Returns:
          (carry, hs): the carry after the last step and h of every step, float32 (B, T, H).
        """
        cell_class = CELL_CLASSES[self.cell]
        first = inputs.dtype == jnp.int32
        in_features = self.vocab_size if first else inputs.shape[-1]
        layer_params = {}
        for denses, in_size, kernel_init in (
                (cell_math.INPUT_DENSES[self.cell], in_features, cell_class.kernel_init),
                (cell_math.HIDDEN_DENSES[self.cell], self.features,
                 cell_class.recurrent_kernel_init)):
            for name, has_bias in denses:
                kernel, bias = DenseParams(self.features, use_bias=has_bias,
                                           kernel_init=kernel_init,
                                           bias_init=cell_class.bias_init, name=name)(
                    jax.ShapeDtypeStruct((in_size,), jnp.float32))
                layer_params[name] = {"kernel": kernel, "bias": bias}
        per_product = (default_gates_per_product(self.cell, self.features)
                       if self.gates_per_product is None else self.gates_per_product)
        input_groups = cell_math.group_kernels(layer_params, cell_math.INPUT_DENSES[self.cell],
                                               per_product)
        hidden_groups = cell_math.group_kernels(layer_params, cell_math.HIDDEN_DENSES[self.cell],
                                                per_product)
        update = cell_math.CELL_UPDATES[self.cell]

        def step(state, inputs_t):
            x_t, scale_t = inputs_t  # x_t: ids (B,) or (B, D); scale_t: (B,) or None
            if first and self.gather_input:
                # Row `id` of W_i is what the one-hot product computes, without the product.
                x_proj = cell_math.gather_project(x_t, input_groups, scale_t)
            else:
                x = jax.nn.one_hot(x_t, self.vocab_size) if first else x_t
                if scale_t is not None:
                    x = x * scale_t[:, None]
                x_proj = cell_math.project(x, input_groups)
            h_proj = cell_math.project(cell_math.hidden(state) * mask, hidden_groups)
            state = update(x_proj, h_proj, state)
            return state, cell_math.hidden(state)

        scale = None if input_scale is None else input_scale.T  # (T, B)
        carry, hs = jax.lax.scan(step, carry, (jnp.swapaxes(inputs, 0, 1), scale),
                                 unroll=self.unroll)  # hs: (T, B, H)
        return carry, jnp.swapaxes(hs, 0, 1)


class RNNLM(nn.Module):
    """Character-level language model over a Flax recurrent cell.

    The fast layers (the default) and the reference layers (`reference=True`:
    one-hot input and `nn.scan` over the Flax cell) compute the same mathematics
    from the same parameters. The fast layers run the time loop as a plain
    `lax.scan` over the cell's equations (`model.cell_math`), and the first of
    them gathers row `id` of its input kernels instead of multiplying a one-hot
    row by them (`gather_input`). The output layer is one (B * T, H) product
    (`flat_head`). `train_unroll` unrolls the whole time loop of small models.
    `benchmarks/train_throughput.py --ablation` measures each of these choices
    against the alternative (figures in BENCHMARKS.md).

    The gates of a layer share one product only where their concatenated
    recurrent kernel fits in half the L2 cache (`default_gates_per_product`):
    one (H, 4H) product for the four gates of the LSTM-256 trained 9% faster
    on a Xeon core with a 2 MB L2 cache and 16% slower on an AMD EPYC core
    with 512 KB, which the 1 MB kernel does not fit. Moving the input products
    of all time steps before the loop and a cuDNN-style backward pass (weight
    gradients after the loop) were slower, so the fast layers do neither.
    """

    config: ModelConfig
    reference: bool = False  # True: one-hot input and nn.scan over the Flax cell
    unroll: int | bool = 1  # time steps per loop iteration; True unrolls the whole loop
    gates_per_product: int | None = None  # fast layers only: gates per product (None: auto)
    gather_input: bool = True  # fast layers only: a row gather instead of a one-hot product
    flat_head: bool = True  # the output layer as one (B * T, H) @ (H, V) product

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
        batch_size = inputs.shape[0]
        if carry is None:
            carry = zero_carry(config, batch_size)
        # Both implementations create the Dropout modules in the same order, so they get the
        # same names and draw the same masks from the same "dropout" rng.
        input_dropout = nn.Dropout(config.input_dropout)
        input_scale = None
        if not self.reference:
            x = inputs.astype(jnp.int32)
            if not deterministic and config.input_dropout > 0:
                # Dropout on a one-hot row keeps or drops its one non-zero entry, so the
                # fast layer only needs each character's factor (0 or 1 / (1 - rate)).
                ones = jnp.ones(inputs.shape + (config.vocab_size,), jnp.float32)  # (B, T, V)
                factors = input_dropout(ones, deterministic=False)
                input_scale = jnp.take_along_axis(factors, x[..., None], axis=-1)[..., 0]
        else:
            x = jax.nn.one_hot(inputs, config.vocab_size)  # (B, T, V)
            x = input_dropout(x, deterministic=deterministic)

        new_carry = []
        for layer in range(config.num_layers):
            if layer > 0:
                x = nn.Dropout(config.dropout)(x, deterministic=deterministic)
            mask = self.recurrent_mask(batch_size, deterministic)  # (B, H)
            if not self.reference:
                layer_module = FastLayer(config.cell, config.num_hiddens, config.vocab_size,
                                         unroll=self.unroll,
                                         gates_per_product=self.gates_per_product,
                                         gather_input=self.gather_input, name=f"layer{layer}")
                layer_carry, x = layer_module(carry[layer], x, mask,
                                              input_scale if layer == 0 else None)
            else:
                scan = nn.scan(MASKED_CELL_CLASSES[config.cell], variable_broadcast="params",
                               split_rngs={"params": False}, in_axes=(1, nn.broadcast),
                               out_axes=1, unroll=self.unroll)
                layer_carry, x = scan(features=config.num_hiddens, name=f"layer{layer}")(
                    carry[layer], x, mask)  # x: (B, T, H)
            new_carry.append(layer_carry)
        x = nn.Dropout(config.dropout)(x, deterministic=deterministic)
        head = nn.Dense(config.vocab_size, name="head")
        if self.flat_head:
            logits = head(x.reshape(-1, x.shape[-1])).reshape(x.shape[:-1] + (config.vocab_size,))
        else:
            logits = head(x)
        return tuple(new_carry), logits  # (B, T, V)

    def recurrent_mask(self, batch_size: int, deterministic: bool):
        """Return a scaled keep mask (B, H) for the hidden state, all ones when not dropping."""
        rate = self.config.recurrent_dropout
        shape = (batch_size, self.config.num_hiddens)
        if deterministic or rate == 0.0:
            return jnp.ones(shape, jnp.float32)
        keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - rate, shape)
        return keep.astype(jnp.float32) / (1.0 - rate)


def l2_cache_bytes() -> int | None:
    """Return the size of the first CPU's L2 cache from Linux's sysfs, or None if unknown."""
    for index in sorted(pathlib.Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (index / "level").read_text().strip() != "2":
                continue
            size = (index / "size").read_text().strip()  # such as "2048K"
        except OSError:
            continue
        units = {"K": 1024, "M": 1024 ** 2}
        if size[-1:] in units and size[:-1].isdigit():
            return int(size[:-1]) * units[size[-1]]
        if size.isdigit():
            return int(size)
    return None


@functools.cache
def default_gates_per_product(cell: str, num_hiddens: int) -> int:
    """Return how many gates the fast layers compute per product on this machine.

    All gates share one product when their float32 recurrent kernel (H, G) takes
    at most half the L2 cache, else each gate has its own (see `RNNLM`).
    """
    gates = len(cell_math.HIDDEN_DENSES[cell])
    l2_bytes = l2_cache_bytes()
    fits = l2_bytes is not None and 4 * num_hiddens * num_hiddens * gates <= l2_bytes // 2
    return gates if fits else 1


# Small models train faster with the time loop fully unrolled (see `train_unroll`).
FULL_UNROLL_MAX_HIDDENS = 64
FULL_UNROLL_MAX_STEPS = 64  # time steps times layers


def train_unroll(config: ModelConfig, num_steps: int) -> int | bool:
    """Return the `unroll` that trains `config` on sequences of `num_steps` fastest.

    A fully unrolled loop lets XLA fuse and schedule the steps of a small model
    together: the book's RNN (32 units, 32 steps) trained 34% faster on one core
    of a 2-core Xeon, and compiled in 5.6 s instead of 2.2 s. Big cells gain
    nothing from it, and a partly unrolled loop was slower (the LSTM-256 at
    unroll 4: 41.8 K against 50.3 K characters/s), so every other model keeps
    one step per iteration.
    """
    small = (config.num_hiddens <= FULL_UNROLL_MAX_HIDDENS
             and num_steps * config.num_layers <= FULL_UNROLL_MAX_STEPS)
    return True if small else 1


def build_model(config: ModelConfig, unroll: int | bool = 1,
                reference: bool = False) -> nn.Module:
    """Return the Flax module for `config.cell`; `reference=True` gives the reference layers."""
    if config.cell == "scratch":
        return ScratchRNNLM(config)
    return RNNLM(config, reference=reference, unroll=unroll)


def init_params(config: ModelConfig, seed: int) -> dict:
    """Initialize parameters deterministically from `seed` (the untrained model of a run).

    The reference layers initialize, so a seed gives the weights it gave before
    the fast layers existed (the step 0 of the shipped runs).
    """
    model = build_model(config, reference=True)
    dummy = jnp.zeros((1, 1), jnp.int32)
    return model.init(jax.random.PRNGKey(seed), dummy)["params"]


def count_params(params) -> int:
    return sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
