"""Training: the optimizer, jitted train and eval steps, and the epoch loop.

Shapes: K = steps fused into one jitted call, B = batch_size, T = num_steps,
V = vocab_size. Losses are natural-log cross-entropy per character;
perplexity = exp(mean loss) and bits per character = mean loss / ln 2.
"""

import dataclasses
import functools
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from model.batching import Batches, d2l_batches, stream_windows
from model.config import ModelConfig, TrainConfig
from model.data import D2L_NUM_VAL
from model.rnn import build_model, init_params, zero_carry

EVAL_WINDOW = 256  # characters per window when a split is read as one stream


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array  # int32 scalar, optimizer steps taken
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32 (2,), the dropout key, split once per step


def make_schedule(config: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    if config.lr_schedule == "constant":
        return optax.constant_schedule(config.lr)
    total = max(1, config.epochs * steps_per_epoch)
    warmup = min(int(config.warmup_epochs * steps_per_epoch), total - 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=config.lr, warmup_steps=warmup, decay_steps=total,
        end_value=config.lr * config.lr_final)


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """Clip by global norm (if on), then SGD, Adam or AdamW with the learning-rate schedule."""
    schedule = make_schedule(config, steps_per_epoch)
    if config.optimizer == "sgd":
        optimizer = optax.sgd(schedule)
    elif config.optimizer == "adam":
        optimizer = optax.adam(schedule)
    else:
        # Decay weight matrices only; biases stay free, as is usual.
        def decay_mask(params):
            return jax.tree_util.tree_map(lambda leaf: leaf.ndim > 1, params)
        optimizer = optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_mask)
    if config.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(config.grad_clip), optimizer)
    return optimizer


def create_state(model_config: ModelConfig, train_config: TrainConfig,
                 tx: optax.GradientTransformation) -> TrainState:
    params = init_params(model_config, train_config.seed)
    rng = jax.random.key_data(jax.random.PRNGKey(train_config.seed + 1))
    return TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params), rng=rng)


def masked_loss(logits, targets, mask):
    """Return (sum of per-character cross-entropy, number of characters) over the mask."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)  # (B, T)
    return jnp.sum(losses * mask), jnp.sum(mask)


def make_train_chunk(model_config: ModelConfig, tx: optax.GradientTransformation,
                     carry_over: bool, unroll: int | bool = 1):
    """Build a jitted function that takes K optimizer steps in one call.

    The returned function maps (state, carry, inputs, targets, mask), with the batch
    arrays shaped (K, B, T), to (state, carry, metrics) where metrics contains per-step
    `loss_sum`, `count` and `grad_norm`, each (K,). Pass
    `unroll=train_unroll(model_config, T)` for the fastest time loop.
    """
    model = build_model(model_config, unroll=unroll)

    def loss_fn(params, carry, inputs, targets, mask, dropout_key):
        carry, logits = model.apply({"params": params}, inputs, carry, deterministic=False,
                                    rngs={"dropout": dropout_key})  # logits: (B, T, V)
        loss_sum, count = masked_loss(logits, targets, mask)
        return loss_sum / jnp.maximum(count, 1.0), (carry, loss_sum, count)

    def step(state_and_carry, batch):
        state, carry = state_and_carry
        inputs, targets, mask = batch
        if not carry_over:
            carry = zero_carry(model_config, inputs.shape[0])
        rng, dropout_key = jax.random.split(jax.random.wrap_key_data(state.rng))
        grads, (carry, loss_sum, count) = jax.grad(loss_fn, has_aux=True)(
            state.params, carry, inputs, targets, mask, dropout_key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        state = TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                           opt_state=opt_state, rng=jax.random.key_data(rng))
        # NOTE: the carry crosses batches as a value only (truncated backpropagation).
        carry = jax.lax.stop_gradient(carry)
        metrics = {"loss_sum": loss_sum, "count": count, "grad_norm": optax.tree.norm(grads)}
        return (state, carry), metrics

    # NOTE: the state is not donated. A Ctrl-C that lands after XLA has taken donated
    # buffers would leave the last good state deleted, and the interrupt handler
    # needs it to write a checkpoint. Donating measured no faster on the CPU
    # (BENCHMARKS.md, "Optimizations: kept and dropped").
    @jax.jit
    def train_chunk(state, carry, inputs, targets, mask):
        (state, carry), metrics = jax.lax.scan(step, (state, carry), (inputs, targets, mask))
        return state, carry, metrics

    return train_chunk


@functools.partial(jax.jit, static_argnames=("config", "carry_over"))
def evaluate_batches(params, config: ModelConfig, inputs, targets, mask, carry_over: bool):
    """Sum the loss over batches (N, B, T), passing the carry between them if `carry_over`."""
    model = build_model(config)

    def step(carry, batch):
        inputs, targets, mask = batch
        start = carry if carry_over else zero_carry(config, inputs.shape[0])
        carry, logits = model.apply({"params": params}, inputs, start)
        loss_sum, count = masked_loss(logits, targets, mask)
        return carry, (loss_sum, count)

    carry = zero_carry(config, inputs.shape[1])
    _, (loss_sums, counts) = jax.lax.scan(step, carry, (inputs, targets, mask))
    return jnp.sum(loss_sums), jnp.sum(counts)


def eval_batches(ids: np.ndarray, split: str, num_steps: int) -> Batches:
    """Build the evaluation layout: the book's windows for `d2l`, one continuous stream for `full`."""
    if split == "d2l":
        num_windows = min(D2L_NUM_VAL, len(ids) - num_steps)
        return d2l_batches(ids[:num_windows + num_steps], 1024, num_steps, rng=None)
    return stream_windows(ids, EVAL_WINDOW)


@dataclasses.dataclass(frozen=True)
class Score:
    loss: float  # mean cross-entropy per character, nats
    num_chars: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.loss < 700 else math.inf  # exp overflows past ~709

    @property
    def bits_per_char(self) -> float:
        return self.loss / math.log(2)


def evaluate(params, config: ModelConfig, ids: np.ndarray, split: str, num_steps: int) -> Score:
    """Score `ids` as `split` prescribes (see `eval_batches`)."""
    batches = eval_batches(ids, split, num_steps)
    loss_sum, count = evaluate_batches(params, config, batches.inputs, batches.targets,
                                       batches.mask, carry_over=batches.carry_over)
    count = float(count)
    return Score(loss=float(loss_sum) / max(count, 1.0), num_chars=int(count))
