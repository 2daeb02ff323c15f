"""Numerical helpers for the web app: bucketed generation, per-character scores, live training.

The app serves requests of any length from a few compiled shapes. Generation
samples in pieces of CHUNK_CHARS characters, and inputs are
padded to a power of two of at least `MIN_BUCKET` characters, so texts of up to
16,384 characters need at most nine compilations per model config. The models
are causal, so padding after the real characters changes none of their outputs.

Shapes: P = padded length, N = real characters, V = vocab_size.
"""

import dataclasses
import functools
import math
import time
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from model.batching import epoch_batches
from model.config import ModelConfig, TrainConfig
from model.data import Corpus, Vocab
from model.rnn import build_model, train_unroll, zero_carry
from model.sampling import PreparedPrefix, Sample, prepare_prefix, read_prefix, sample, sample_more
from model.train_lib import (NonFiniteLossError, Score, create_state, evaluate, make_optimizer,
                             make_train_chunk)
from model.trainer import epoch_rng

MIN_BUCKET = 64  # the smallest padded length, in characters
CHUNK_CHARS = 64  # characters sampled per compiled call by `generate_chunks`


def bucket_size(length: int) -> int:
    """Return the smallest power of two that is >= `length` and >= MIN_BUCKET."""
    return max(MIN_BUCKET, 1 << max(0, length - 1).bit_length())


def pad_ids(ids: np.ndarray) -> np.ndarray:
    """Pad int32 ids (N,) with zeros to (bucket_size(N),)."""
    padded = np.zeros(bucket_size(len(ids)), np.int32)  # (P,)
    padded[:len(ids)] = ids
    return padded


def sampling_keys(seed: int, num_chars: int) -> np.ndarray:
    """Return at least `num_chars` per-character keys of `seed`, uint32 (P, 2), P a power of two.

    Key i equals key i of `jax.random.split(key, num_chars)`, as in `generate_ids`.
    Rounding the count up means one compiled split per power of two, and NumPy
    slices the result, so a new length compiles nothing.
    """
    count = max(CHUNK_CHARS, 1 << max(0, num_chars - 1).bit_length())
    return np.asarray(jax.random.split(jax.random.PRNGKey(seed), count))


def generate_chunks(params, config: ModelConfig, vocab: Vocab, prepared: PreparedPrefix,
                    num_chars: int, *, seed: int, temperature: float, top_k: int,
                    top_p: float = 1.0) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (text, log_probs float32 (n,)) for each next piece of at most CHUNK_CHARS characters.

    The pieces join into the text `model.sampling.sample` gives with the same
    seed and settings. Each piece is one jitted call, so a caller can show the
    first characters of a long text after about CHUNK_CHARS steps.
    """
    ids = vocab.encode(prepared.primer)  # (N,)
    state = read_prefix(params, config, pad_ids(ids), jnp.int32(len(ids)))
    num_chunks = -(-num_chars // CHUNK_CHARS)
    keys = sampling_keys(seed, num_chunks * CHUNK_CHARS)  # (>= C * K, 2)
    settings = (jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p))
    for chunk in range(num_chunks):
        begin = chunk * CHUNK_CHARS
        state, new_ids, log_probs = sample_more(params, config, state,
                                                keys[begin:begin + CHUNK_CHARS], *settings)
        keep = min(CHUNK_CHARS, num_chars - begin)
        yield vocab.decode(np.asarray(new_ids)[:keep]), np.asarray(log_probs)[:keep]


def generate(params, config: ModelConfig, vocab: Vocab, preprocess_mode: str,
             prefix: str | None, num_chars: int, *, seed: int, temperature: float,
             top_k: int, top_p: float = 1.0) -> Sample:
    """Generate like `model.sampling.sample`, from the compiled pieces of `generate_chunks`."""
    prepared = prepare_prefix(prefix, vocab, preprocess_mode)
    pieces = list(generate_chunks(params, config, vocab, prepared, num_chars, seed=seed,
                                  temperature=temperature, top_k=top_k, top_p=top_p))
    return Sample(prepared, "".join(text for text, _ in pieces),
                  np.concatenate([log_probs for _, log_probs in pieces]
                                 or [np.zeros(0, np.float32)]))


@functools.partial(jax.jit, static_argnames=("config",))
def sequence_log_probs(params, config: ModelConfig, ids):
    """Return the log-softmax of the logits after every character of ids int32 (P,): (P, V)."""
    _, logits = build_model(config).apply({"params": params}, ids[None, :])  # (1, P, V)
    return jax.nn.log_softmax(logits[0])  # (P, V)


def next_char_logits(params, config: ModelConfig, ids: np.ndarray) -> np.ndarray:
    """Return the float32 logits (V,) for the character after ids (N,), N >= 1.

    They are log-softmax normalized, which changes no probability after any
    temperature or top-k cutoff.
    """
    log_probs = sequence_log_probs(params, config, pad_ids(ids))  # (P, V)
    return np.asarray(log_probs[len(ids) - 1])


def char_log_probs(params, config: ModelConfig, ids: np.ndarray) -> np.ndarray:
    """Return the natural-log probability of ids[1:] given the characters before each: (N - 1,).

    The carry runs through the whole text, as `train_lib.evaluate` does on the
    "full" split, so exp(-mean) is that function's perplexity.
    """
    log_probs = np.asarray(sequence_log_probs(params, config, pad_ids(ids)))  # (P, V)
    return log_probs[np.arange(len(ids) - 1), ids[1:]]  # (N - 1,)


@dataclasses.dataclass(frozen=True)
class LiveUpdate:
    """The state of a live training run, reported after every fused chunk of steps."""

    epochs_done: int
    steps_done: int  # optimizer steps taken in the current epoch
    steps_per_epoch: int
    history: tuple  # one dict per finished epoch, with the keys of a checkpoint's history
    sample: str | None  # text sampled after the last finished epoch
    elapsed: float  # seconds since the run started, compilation included
    timed_out: bool  # True on the last update of a run stopped by the time limit
    params: dict | None = None  # the parameters after the last finished epoch


def live_batches(corpus: Corpus, config: TrainConfig, epoch: int):
    """Return one epoch's batches, cut to a whole number of fused chunks.

    NOTE: a shorter last chunk would need its own compilation, which costs more
    than the few batches (fewer than steps_per_call) left out each epoch.
    """
    batches = epoch_batches(corpus.train, config.batching, config.split, config.batch_size,
                            config.num_steps, epoch_rng(config.seed, epoch))
    usable = len(batches) // config.steps_per_call * config.steps_per_call
    return batches, max(usable, config.steps_per_call)


def train_live(model_config: ModelConfig, config: TrainConfig, corpus: Corpus, *,
               time_limit: float, sample_prefix: str, sample_chars: int = 80,
               sample_temperature: float = 0.7) -> Iterator[LiveUpdate]:
    """Train from scratch without checkpoints, yielding a `LiveUpdate` after every chunk.

    Closing the generator stops the run at the next chunk boundary. The run also
    stops, with `timed_out` set on its last update, once `time_limit` seconds
    have passed. The corpus needs at least steps_per_call batches per epoch.
    """
    batches, usable = live_batches(corpus, config, 0)
    if len(batches) < config.steps_per_call:
        raise ValueError(f"the training text gives {len(batches)} batches per epoch; "
                         f"at least {config.steps_per_call} are needed")
    tx = make_optimizer(config, usable)
    state = create_state(model_config, config, tx)
    train_chunk = make_train_chunk(model_config, tx, carry_over=batches.carry_over,
                                   unroll=train_unroll(model_config, config.num_steps))
    history, text, started = [], None, time.perf_counter()

    for epoch in range(config.epochs):
        batches, usable = live_batches(corpus, config, epoch)
        carry = zero_carry(model_config, config.batch_size)
        loss_sum, count, epoch_start = 0.0, 0.0, time.perf_counter()

        # Fused train steps; report after each chunk so a cancel takes effect quickly.
        for begin in range(0, usable, config.steps_per_call):
            end = begin + config.steps_per_call
            state, carry, metrics = train_chunk(state, carry,
                                                *batches.take(begin, end))  # (K, B, T) each
            loss_sum += float(jnp.sum(metrics["loss_sum"]))
            count += float(jnp.sum(metrics["count"]))
            if not math.isfinite(loss_sum):
                raise NonFiniteLossError(
                    f"the training loss became {loss_sum} in epoch {epoch + 1}")
            elapsed = time.perf_counter() - started
            timed_out = elapsed > time_limit
            yield LiveUpdate(epoch, end, usable, tuple(history), text, elapsed, timed_out)
            if timed_out:
                return

        # Evaluate on the validation part and sample.
        val = evaluate(state.params, model_config, corpus.val, config.split, config.num_steps)
        train = Score(loss_sum / max(count, 1.0), int(count))
        history.append({"epoch": epoch + 1, "step": int(state.step),
                        "train_perplexity": train.perplexity, "val_perplexity": val.perplexity,
                        "val_bits_per_char": val.bits_per_char,
                        "chars_per_sec": count / (time.perf_counter() - epoch_start),
                        "wall_time": time.perf_counter() - started})
        text = sample(state.params, model_config, corpus.vocab, config.preprocess, sample_prefix,
                      sample_chars, seed=0, temperature=sample_temperature).text
        yield LiveUpdate(epoch + 1, usable, usable, tuple(history), text,
                         time.perf_counter() - started, False, state.params)
