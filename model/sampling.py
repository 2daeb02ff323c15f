"""Text generation: warm the carry up on a prefix, then sample with `lax.scan`.

`generate_ids` is one pure jitted function. It compiles once per (padded
prefix length, num_chars) shape: prefixes are padded to a bucket of
`PREFIX_BUCKET` characters and the padding steps leave the carry unchanged.
Temperature, top-k and top-p are traced values, so changing them never
recompiles. `read_prefix` and `sample_more` split the same computation into
pieces, for callers that show text while the rest is still being sampled.

Each character costs one pass through the layers at batch 1, so the time goes
to matrix-vector products, which are bound by reading the weights, and to the
fixed cost of every operation in the loop body.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from model import cell_math
from model.config import ModelConfig
from model.data import Vocab, preprocess
from model.rnn import build_model, zero_carry

PREFIX_BUCKET = 64  # prefixes are padded up to a multiple of this many characters


def _filter_logits(logits, top_k, top_p):
    """Mask logits (V,) outside the top-k set and outside the top-p nucleus with -inf."""
    vocab_size = logits.shape[-1]
    descending = jnp.sort(logits)[::-1]  # (V,)
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab_size), vocab_size)
    kth_largest = descending[k - 1]
    logits = jnp.where(logits < kth_largest, -jnp.inf, logits)

    # Nucleus: keep the smallest set of most likely characters whose mass reaches top_p.
    probs = jax.nn.softmax(jnp.sort(logits)[::-1])  # (V,), descending
    mass_before = jnp.cumsum(probs) - probs
    keep = mass_before < top_p
    threshold = jnp.min(jnp.where(keep, jnp.sort(logits)[::-1], jnp.inf))
    return jnp.where(logits < threshold, -jnp.inf, logits)


def _next_char(logits, key, temperature, top_k, top_p):
    """Pick one character id from logits (V,): argmax at temperature 0, else sample."""
    greedy = jnp.argmax(logits)
    safe_temperature = jnp.where(temperature > 0, temperature, 1.0)
    scaled = _filter_logits(logits / safe_temperature, top_k, top_p)
    sampled = jax.random.categorical(key, jax.nn.log_softmax(scaled))
    return jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)


STEPS = ("reference", "gates", "fused")  # the ways `generate_ids` can compute a step


def make_step(params, config: ModelConfig, how: str = "gates"):
    """Return step(carry, char_id) -> (carry, logits (V,)) for one character at batch 1.

    Both ways read row `char_id` of the first layer's input kernels, which is what
    the one-hot product computes, and skip the reference model's scan. "gates"
    keeps one matrix-vector product per gate, as the Flax cells store the kernels;
    "fused" concatenates each layer's gates into one (H, G) kernel.

    NOTE: neither was faster than the reference step in
    `benchmarks/generation_speed.py` ("fused" was slower), because at batch 1 a
    step is bound by reading the weights, so `generate_ids` defaults to the
    reference step and these remain for that comparison.
    """
    if config.cell == "scratch":
        # The scratch RNN's weights under the names of a one-layer SimpleCell.
        cell, num_layers = "rnn", 1
        layers = [{"i": {"kernel": params["W_xh"], "bias": params["b_h"]},
                   "h": {"kernel": params["W_hh"]}}]
        head = {"kernel": params["W_hq"], "bias": params["b_q"]}
    else:
        cell, num_layers = config.cell, config.num_layers
        layers = [params[f"layer{layer}"] for layer in range(num_layers)]
        head = params["head"]
    gates_per_product = 1 if how == "gates" else len(cell_math.INPUT_DENSES[cell])
    # Concatenated once per jitted call, outside the time loop.
    input_groups = [cell_math.group_kernels(layer_params, cell_math.INPUT_DENSES[cell],
                                            gates_per_product) for layer_params in layers]
    hidden_groups = [cell_math.group_kernels(layer_params, cell_math.HIDDEN_DENSES[cell],
                                             gates_per_product) for layer_params in layers]
    update = cell_math.CELL_UPDATES[cell]

    def step(carry, char_id):  # char_id: int32 scalar
        new_carry = []
        for layer in range(num_layers):
            if layer == 0:
                # Row `char_id` of each input kernel, read with a dynamic slice.
                x_proj = jnp.concatenate([kernel[char_id][None, :] + bias
                                          for kernel, bias in input_groups[0]], axis=-1)  # (1, G)
            else:
                x_proj = cell_math.project(h, input_groups[layer])
            h_proj = cell_math.project(cell_math.hidden(carry[layer]), hidden_groups[layer])
            state = update(x_proj, h_proj, carry[layer])
            h = cell_math.hidden(state)  # (1, H)
            new_carry.append(state)
        return tuple(new_carry), (h @ head["kernel"] + head["bias"])[0]  # logits (V,)

    return step


def _step_function(params, config: ModelConfig, step: str):
    """Return step(carry, char_id) -> (carry, logits (V,)) computed the way `step` names."""
    if step not in STEPS:
        raise ValueError(f"step must be one of {STEPS}, got {step!r}")
    if step != "reference":
        return make_step(params, config, step)
    model = build_model(config, reference=True)

    def step_fn(carry, char_id):  # char_id: int32 scalar
        carry, logits = model.apply({"params": params}, char_id.reshape(1, 1), carry)
        return carry, logits[0, 0]  # (V,)

    return step_fn


def _read_prefix(step_fn, config: ModelConfig, prefix_ids, prefix_len):
    """Run the carry through a padded prefix; return (carry, logits (V,) after its last character).

    Padding steps (t >= prefix_len) keep the previous carry and logits.
    """
    def warm(state, inputs):
        carry, last_logits = state
        t, char_id = inputs
        new_carry, logits = step_fn(carry, char_id)
        active = t < prefix_len
        carry = jax.tree_util.tree_map(lambda new, old: jnp.where(active, new, old),
                                       new_carry, carry)
        return (carry, jnp.where(active, logits, last_logits)), None

    start = (zero_carry(config, 1), jnp.zeros((config.vocab_size,), jnp.float32))
    positions = jnp.arange(prefix_ids.shape[0])
    state, _ = jax.lax.scan(warm, start, (positions, prefix_ids))
    return state


def _sample_chars(step_fn, state, keys, temperature, top_k, top_p):
    """Sample one character per key (N, 2) from state (carry, logits).

    Returns (state, ids int32 (N,), log_probs float32 (N,)).
    """
    def sample_one(state, key):
        carry, logits = state
        char_id = _next_char(logits, key, temperature, top_k, top_p)
        log_prob = jax.nn.log_softmax(logits)[char_id]
        carry, logits = step_fn(carry, char_id)
        return (carry, logits), (char_id, log_prob)

    state, (ids, log_probs) = jax.lax.scan(sample_one, state, keys)
    return state, ids, log_probs


@functools.partial(jax.jit, static_argnames=("config", "num_chars", "step"))
def generate_ids(params, config: ModelConfig, prefix_ids, prefix_len, key, temperature,
                 top_k, top_p, *, num_chars: int, step: str = "reference"):
    """Generate `num_chars` ids after a prefix, for one sequence.

    Args:
      params: model parameters.
      config: the model's config (static).
      prefix_ids: int32 (P,) prefix ids, padded after `prefix_len` (P is the bucket size).
      prefix_len: int32 scalar, 1 <= prefix_len <= P.
      key: PRNG key; the same key gives the same text.
      temperature: float scalar; 0 is greedy, < 1 sharpens, 1 leaves the model's distribution.
      top_k: int32 scalar; 0 disables the cutoff.
      top_p: float scalar in (0, 1]; 1 disables the nucleus cutoff.
      num_chars: number of characters to generate (static).
      step: how a character is computed, one of STEPS (static): "reference"
        (`model.apply` of the reference model), or "gates" or "fused" (see `make_step`).
        All three give the same characters, up to float rounding.

    Returns:
      (ids int32 (num_chars,), log_probs float32 (num_chars,)): the generated ids and the
      log-probability the model (at temperature 1, before any cutoff) gave each of them.
    """
    step_fn = _step_function(params, config, step)
    state = _read_prefix(step_fn, config, prefix_ids, prefix_len)
    # Character i uses key i of the split. The pinned JAX splits keys partitionably
    # (jax_threefry_partitionable is on), so key i does not depend on num_chars.
    keys = jax.random.split(key, num_chars)  # (num_chars, 2)
    _, ids, log_probs = _sample_chars(step_fn, state, keys, temperature, top_k, top_p)
    return ids, log_probs


@functools.partial(jax.jit, static_argnames=("config",))
def read_prefix(params, config: ModelConfig, prefix_ids, prefix_len):
    """Return the sampling state (carry, logits (V,)) after a padded prefix.

    It is the state `generate_ids` starts sampling from. With `sample_more`
    this splits `generate_ids` into pieces, so that a caller can show the first
    characters while the rest are still to be sampled.
    """
    return _read_prefix(_step_function(params, config, "reference"), config, prefix_ids,
                        prefix_len)


@functools.partial(jax.jit, static_argnames=("config",))
def sample_more(params, config: ModelConfig, state, keys, temperature, top_k, top_p):
    """Sample one character per key (N, 2) from a sampling state.

    Returns (state, ids int32 (N,), log_probs float32 (N,)). Given keys i to i + N
    of `jax.random.split(key, n)`, it samples characters i to i + N of
    `generate_ids` with that key. It compiles once per N.
    """
    return _sample_chars(_step_function(params, config, "reference"), state, keys,
                         temperature, top_k, top_p)


@dataclasses.dataclass(frozen=True)
class PreparedPrefix:
    """A prefix as the model reads it."""

    text: str  # after the checkpoint's preprocessing, with unknown characters removed
    removed: str  # distinct characters that were not in the vocabulary
    primer: str  # what the carry is warmed up on: `text`, or one boundary character if empty


def prepare_prefix(prefix: str | None, vocab: Vocab, preprocess_mode: str) -> PreparedPrefix:
    """Normalize a user prefix for a model; never raises on odd characters.

    An empty prefix (or one that is empty after normalization) starts the model
    from a fresh boundary: it is warmed up on one newline or space, which is not
    part of the returned text.
    """
    text = preprocess(prefix or "", preprocess_mode)
    removed = vocab.unknown(text)
    if removed:
        text = "".join(char for char in text if char in vocab)
    primer = text if text else vocab.boundary_char()
    return PreparedPrefix(text=text, removed=removed, primer=primer)


def pad_prefix(ids: np.ndarray) -> np.ndarray:
    """Pad ids (n,) with zeros to the next multiple of PREFIX_BUCKET."""
    size = max(PREFIX_BUCKET, -(-len(ids) // PREFIX_BUCKET) * PREFIX_BUCKET)
    padded = np.zeros(size, np.int32)
    padded[:len(ids)] = ids
    return padded


@dataclasses.dataclass(frozen=True)
class Sample:
    prefix: PreparedPrefix
    text: str  # the generated characters only
    log_probs: np.ndarray  # float32 (num_chars,), natural log


def sample(params, config: ModelConfig, vocab: Vocab, preprocess_mode: str, prefix: str | None,
           num_chars: int, *, seed: int = 0, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0) -> Sample:
    """Generate `num_chars` characters after `prefix`; the same seed gives the same text."""
    if num_chars < 0:
        raise ValueError(f"num_chars must be 0 or more, got {num_chars}")
    prepared = prepare_prefix(prefix, vocab, preprocess_mode)
    if num_chars == 0:
        return Sample(prepared, "", np.zeros(0, np.float32))
    ids = vocab.encode(prepared.primer)
    ids, log_probs = generate_ids(
        params, config, pad_prefix(ids), jnp.int32(len(ids)), jax.random.PRNGKey(seed),
        jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p), num_chars=num_chars)
    return Sample(prepared, vocab.decode(np.asarray(ids)), np.asarray(log_probs))
