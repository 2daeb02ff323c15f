"""The training loop: epochs of fused train steps, evaluation, logging and checkpoints."""

import dataclasses
import logging
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from model import checkpoint
from model.batching import epoch_batches
from model.config import ModelConfig, TrainConfig, to_dict
from model.data import Corpus
from model.rnn import count_params, zero_carry
from model.sampling import sample
from model.train_lib import (NonFiniteLossError, Score, TrainState, create_state, evaluate,
                             make_optimizer, make_train_chunk)

log = logging.getLogger(__name__)

SAMPLE_PREFIX = "the time traveller"
SAMPLE_CHARS = 60


class ConfigMismatchError(Exception):
    """--resume was given a configuration that differs from the checkpoint's."""


@dataclasses.dataclass
class FitResult:
    state: TrainState
    history: list  # one dict per epoch
    best_val_perplexity: float
    finished: bool  # True when all epochs ran or early stopping ended the run
    stopped_early: bool = False


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The batch-order generator of one epoch: the same for a resumed and a straight run."""
    return np.random.default_rng([seed, epoch])


def state_tree(state: TrainState, carry, epoch: int, batch: int) -> dict:
    return {"params": state.params, "opt_state": state.opt_state, "step": state.step,
            "rng": state.rng, "carry": carry, "epoch": np.array(epoch, np.int32), "batch": np.array(batch, np.int32)}


def check_resume_compatible(meta: dict, model_config: ModelConfig, train_config: TrainConfig,
                            vocab_chars: list[str]) -> None:
    """Reject resuming with a model, data or schedule that differs from the checkpoint's."""
    saved_model, current_model = meta["model_config"], to_dict(model_config)
    if saved_model != current_model:
        differences = {key: (saved_model.get(key), current_model[key]) for key in current_model
                       if saved_model.get(key) != current_model[key]}
        details = ", ".join(f"{key}: checkpoint {old!r} vs requested {new!r}"
                            for key, (old, new) in differences.items())
        raise ConfigMismatchError(f"cannot resume, the model differs from the checkpoint's ({details})")
    if meta["vocab"] != vocab_chars:
        raise ConfigMismatchError(
            f"cannot resume, the vocabulary differs: checkpoint has {len(meta['vocab'])} characters "
            f"{''.join(meta['vocab'])!r}, the corpus gives {len(vocab_chars)} "
            f"{''.join(vocab_chars)!r}")
    saved_train = meta["train_config"]
    fixed = ("batch_size", "num_steps", "optimizer", "preprocess", "split", "batching", "seed")
    for key in fixed:
        if saved_train.get(key) != getattr(train_config, key):
            raise ConfigMismatchError(
                f"cannot resume, {key} differs: checkpoint {saved_train.get(key)!r} vs requested "
                f"{getattr(train_config, key)!r}")


def fit(model_config: ModelConfig, train_config: TrainConfig, corpus: Corpus,
        checkpoint_dir=None, resume: bool = False, progress: bool = True,
        on_epoch=None) -> FitResult:
    """Train, evaluating on the validation part after each epoch and checkpointing it.

    `on_epoch(record)` is called after every epoch with that epoch's history record.
    """
    config = train_config
    rng = epoch_rng(config.seed, 0)
    steps_per_epoch = len(epoch_batches(corpus.train, config.batching, config.split,
                                        config.batch_size, config.num_steps, rng))
    tx = make_optimizer(config, steps_per_epoch)
    state = create_state(model_config, config, tx)
    carry = zero_carry(model_config, config.batch_size)
    start_epoch, start_batch, history = 0, 0, []
    vocab_chars = list(corpus.vocab.chars)

    manager = checkpoint.open_manager(checkpoint_dir) if checkpoint_dir else None
    if manager is not None and resume and manager.latest_step() is not None:
        step = manager.latest_step()
        meta = checkpoint.restore_meta(manager, step)
        check_resume_compatible(meta, model_config, config, vocab_chars)
        restored = checkpoint.restore_state(manager, step, state_tree(state, carry, 0, 0))
        state = TrainState(step=restored["step"], params=restored["params"],
                           opt_state=restored["opt_state"], rng=restored["rng"])
        carry = restored["carry"]
        start_epoch, start_batch = int(restored["epoch"]), int(restored["batch"])
        history = list(meta["history"])
        log.info("resumed from %s at step %d (epoch %d, batch %d)",
                 manager.directory, step, start_epoch, start_batch)
        if meta.get("finished"):
            log.info("this run already finished (%d epochs, best val perplexity %.3f); "
                     "nothing to do", len(history), meta["best_val_perplexity"])
            return FitResult(state, history, meta["best_val_perplexity"], finished=True)
    elif manager is not None and manager.latest_step() is not None:
        raise checkpoint.CheckpointError(
            f"{manager.directory} already contains a checkpoint (step {manager.latest_step()}); "
            "pass --resume to continue it or choose another --checkpoint-dir")

    log.info("model: %s cell, %d layer(s) x %d hidden, %s parameters, vocab %d",
             model_config.cell, model_config.num_layers, model_config.num_hiddens,
             f"{count_params(state.params):,}", model_config.vocab_size)
    log.info("data: %s train / %s val / %s test characters, %d steps of %d x %d per epoch, "
             "device %s", f"{len(corpus.train):,}", f"{len(corpus.val):,}",
             f"{len(corpus.test):,}", steps_per_epoch, config.batch_size, config.num_steps,
             jax.devices()[0].platform)

    best = min((record["val_perplexity"] for record in history), default=math.inf)
    elapsed_before = history[-1]["wall_time"] if history else 0.0
    carry_over = config.batching == "sequential" and config.split != "d2l"
    train_chunk = make_train_chunk(model_config, tx, carry_over)
    started = time.perf_counter()
    stopped_early = False

    try:
        for epoch in range(start_epoch, config.epochs):
            # Batches for this epoch (the same order on a resumed run).
            batches = epoch_batches(corpus.train, config.batching, config.split, config.batch_size,
                                    config.num_steps, epoch_rng(config.seed, epoch))
            if start_batch == 0:
                carry = zero_carry(model_config, config.batch_size)
            epoch_loss, epoch_count, epoch_start = 0.0, 0.0, time.perf_counter()

            # Fused train steps, K at a time.
            bar = tqdm(total=len(batches), initial=start_batch, desc=f"epoch {epoch + 1}/{config.epochs}",
                       unit="step", disable=not progress, leave=False)
            for begin in range(start_batch, len(batches), config.steps_per_call):
                end = min(begin + config.steps_per_call, len(batches))
                state, carry, metrics = train_chunk(state, carry, batches.inputs[begin:end],
                                                    batches.targets[begin:end], batches.mask[begin:end])
                loss_sum = float(jnp.sum(metrics["loss_sum"]))
                if not math.isfinite(loss_sum):
                    bar.close()
                    raise NonFiniteLossError(
                        f"the training loss became {loss_sum} at epoch {epoch + 1}, step "
                        f"{int(state.step)}; no checkpoint was written after the last good one. "
                        "Lower --lr or keep --grad-clip on")
                epoch_loss += loss_sum
                epoch_count += float(jnp.sum(metrics["count"]))
                bar.update(end - begin)
                bar.set_postfix(loss=f"{epoch_loss / max(epoch_count, 1):.3f}")
            bar.close()
            start_batch = 0
            epoch_seconds = time.perf_counter() - epoch_start

            # Evaluate, log and maybe sample.
            train_score = Score(epoch_loss / max(epoch_count, 1.0), int(epoch_count))
            val_score = evaluate(state.params, model_config, corpus.val, config.split, config.num_steps)
            if not math.isfinite(val_score.perplexity):
                raise NonFiniteLossError(
                    f"the validation perplexity became {val_score.perplexity} at epoch {epoch + 1}; "
                    "no checkpoint was written after the last good one. Lower --lr or keep "
                    "--grad-clip on")
            record = {"epoch": epoch + 1, "step": int(state.step),
                      "train_perplexity": train_score.perplexity,
                      "val_perplexity": val_score.perplexity,
                      "val_bits_per_char": val_score.bits_per_char,
                      "chars_per_sec": epoch_count / epoch_seconds,
                      "wall_time": elapsed_before + time.perf_counter() - started}
            history.append(record)
            improved = record["val_perplexity"] < best
            best = min(best, record["val_perplexity"])
            log.info("epoch %3d  train ppl %7.3f  val ppl %7.3f (%.3f bpc)%s  %8.0f chars/s  %6.1fs",
                     epoch + 1, record["train_perplexity"], record["val_perplexity"],
                     record["val_bits_per_char"], " *" if improved else "  ",
                     record["chars_per_sec"], record["wall_time"])
            if config.sample_every and (epoch + 1) % config.sample_every == 0:
                text = sample(state.params, model_config, corpus.vocab, config.preprocess,
                              SAMPLE_PREFIX, SAMPLE_CHARS, temperature=0.0).text
                log.info("sample: %r", SAMPLE_PREFIX + text)
            if on_epoch is not None:
                on_epoch(record)

            # Maybe stop early, then checkpoint.
            since_best = len(history) - 1 - int(np.argmin([r["val_perplexity"] for r in history]))
            stopped_early = config.patience > 0 and since_best >= config.patience
            finished = stopped_early or epoch + 1 == config.epochs
            if manager is not None:
                meta = build_meta(model_config, config, vocab_chars, history, best, finished)
                checkpoint.save(manager, int(state.step), state_tree(state, carry, epoch + 1, 0),
                                meta, record["val_perplexity"])
            if stopped_early:
                log.info("stopping early: no better val perplexity for %d epochs", config.patience)
                break
    finally:
        # Orbax saves in the background: wait, so no save is cut off on exit.
        if manager is not None:
            manager.wait_until_finished()
            manager.close()
    return FitResult(state, history, best, finished=True, stopped_early=stopped_early)


def build_meta(model_config: ModelConfig, train_config: TrainConfig, vocab_chars: list[str],
               history: list, best: float, finished: bool) -> dict:
    return {"model_config": to_dict(model_config), "train_config": to_dict(train_config),
            "vocab": vocab_chars, "preprocess": train_config.preprocess, "history": history,
            "best_val_perplexity": best, "finished": finished}
