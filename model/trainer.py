"""The training loop: epochs of fused train steps, evaluation, logging and checkpoints."""

import dataclasses
import logging
import math
import time
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from model import checkpoint
from model.batching import epoch_batches
from model.config import ModelConfig, TrainConfig, to_dict
from model.data import Corpus
from model.parallel import DataParallel, describe, make_data_parallel, to_host
from model.rnn import count_params, train_unroll, zero_carry
from model.sampling import sample
from model.train_lib import (NonFiniteLossError, Score, TrainState, create_state, evaluate,
                             make_optimizer, make_train_chunk)

log = logging.getLogger(__name__)

# Checkpoints saved mid-epoch on an interruption get this metric, so the manager
# never ranks them as the best: their parameters are not an evaluated epoch's.
INTERRUPTED_METRIC = 1e9
SAMPLE_PREFIX = "the time traveller"
SAMPLE_CHARS = 60


class ConfigMismatchError(Exception):
    """--resume was given a configuration that differs from the checkpoint's."""


RESUME_FIX = "; pass the checkpoint's values to resume it, or choose another --checkpoint-dir"


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
    # The vocabulary first: another corpus also changes vocab_size in the model config.
    if meta["vocab"] != vocab_chars:
        raise ConfigMismatchError(
            f"cannot resume, the vocabulary differs: checkpoint has {len(meta['vocab'])} characters "
            f"{''.join(meta['vocab'])!r}, the corpus gives {len(vocab_chars)} "
            f"{''.join(vocab_chars)!r}; resume with the --data and --preprocess the run started "
            "with, or choose another --checkpoint-dir")
    saved_model, current_model = meta["model_config"], to_dict(model_config)
    if saved_model != current_model:
        differences = {key: (saved_model.get(key), current_model[key]) for key in current_model
                       if saved_model.get(key) != current_model[key]}
        details = ", ".join(f"{key}: checkpoint {old!r} vs requested {new!r}"
                            for key, (old, new) in differences.items())
        raise ConfigMismatchError(f"cannot resume, the model differs from the checkpoint's "
                                  f"({details}){RESUME_FIX}")
    saved_train = meta["train_config"]
    fixed = ("batch_size", "num_steps", "optimizer", "preprocess", "split", "batching", "seed")
    for key in fixed:
        if saved_train.get(key) != getattr(train_config, key):
            raise ConfigMismatchError(
                f"cannot resume, {key} differs: checkpoint {saved_train.get(key)!r} vs requested "
                f"{getattr(train_config, key)!r}{RESUME_FIX}")
    # Clipping is a stage of the optimizer, so switching it on or off changes the state's tree.
    if (saved_train.get("grad_clip", 0) > 0) != (train_config.grad_clip > 0):
        raise ConfigMismatchError(
            f"cannot resume, grad_clip differs: checkpoint {saved_train.get('grad_clip')!r} vs "
            f"requested {train_config.grad_clip!r}, and switching clipping on or off changes the "
            f"optimizer state{RESUME_FIX}")


@dataclasses.dataclass
class Run:
    """Mutable position and record of a training run."""

    state: TrainState
    carry: tuple
    epoch: int = 0  # epochs completed
    batch: int = 0  # batches done within the current epoch
    history: list = dataclasses.field(default_factory=list)
    best_params: Any = None  # host copy of the parameters of the best epoch so far
    loss_sum: float = 0.0  # training loss summed over the current epoch so far, nats
    loss_count: float = 0.0  # characters behind loss_sum

    @property
    def best(self) -> float:
        return min((record["val_perplexity"] for record in self.history), default=math.inf)

    @property
    def best_epoch(self) -> int:
        """Return the 1-based epoch with the lowest validation perplexity (0 before any)."""
        if not self.history:
            return 0
        return int(np.argmin([record["val_perplexity"] for record in self.history])) + 1


def restore_run(manager, run: Run, model_config: ModelConfig, config: TrainConfig,
                vocab_chars: list[str]) -> tuple[Run, bool]:
    """Load the latest checkpoint into a Run; return it and whether that run had finished."""
    step = manager.latest_step()
    meta = checkpoint.restore_meta(manager, step)
    check_resume_compatible(meta, model_config, config, vocab_chars)
    restored = checkpoint.restore_state(manager, step, state_tree(run.state, run.carry, 0, 0))
    state = TrainState(step=restored["step"], params=restored["params"],
                       opt_state=restored["opt_state"], rng=restored["rng"])
    run = Run(state=state, carry=restored["carry"], epoch=int(restored["epoch"]),
              batch=int(restored["batch"]), history=list(meta["history"]),
              loss_sum=meta.get("epoch_loss_sum", 0.0),
              loss_count=meta.get("epoch_loss_count", 0.0))
    best_step = manager.best_step()
    if run.history and best_step == step and run.history[-1]["step"] == step:
        run.best_params = jax.device_get(state.params)
    elif run.history and best_step is not None:
        best = checkpoint.restore_state(manager, best_step, state_tree(run.state, run.carry, 0, 0))
        run.best_params = jax.device_get(best["params"])
    # The same position format as the interrupt message: the epoch in progress
    # (1-based) and the batches already done in it.
    log.info("resumed from %s at step %d (epoch %d, batch %d)", manager.directory, step,
             run.epoch + 1, run.batch)
    return run, bool(meta.get("finished"))


def check_finite(value: float, what: str, run: Run) -> None:
    if not math.isfinite(value):
        raise NonFiniteLossError(
            f"the {what} became {value} at epoch {run.epoch + 1}, "
            f"step {int(to_host(run.state.step))}; "
            "no checkpoint was written after the last good one. Lower --lr or keep --grad-clip on")


def train_epoch(run: Run, train_chunk, batches, config: TrainConfig, parallel: DataParallel,
                progress: bool) -> Score:
    """Take the remaining steps of the current epoch, K per jitted call; return its train score.

    `run.batch` advances after every call, so an interruption leaves a resumable position.
    Each call's batches are placed split along the mesh's data axis.
    """
    rows = parallel.local_rows(config.batch_size)
    if run.batch == 0:
        run.loss_sum, run.loss_count = 0.0, 0.0
    bar = tqdm(total=len(batches), initial=run.batch, unit="step", leave=False,
               desc=f"epoch {run.epoch + 1}/{config.epochs}", disable=not progress)
    with bar:
        while run.batch < len(batches):
            begin, end = run.batch, min(run.batch + config.steps_per_call, len(batches))
            inputs, targets, mask = (parallel.put_batch(array, config.batch_size)
                                     for array in batches.take(begin, end, rows))  # (K, B, T)
            state, carry, metrics = train_chunk(run.state, run.carry, inputs, targets, mask)
            metrics = to_host(metrics)  # waits for the devices
            loss_sum = float(np.sum(metrics["loss_sum"]))
            run.state, run.carry, run.batch = state, carry, end
            check_finite(loss_sum, "training loss", run)
            run.loss_sum += loss_sum
            run.loss_count += float(np.sum(metrics["count"]))
            bar.update(end - begin)
            bar.set_postfix(loss=f"{run.loss_sum / max(run.loss_count, 1.0):.3f}")
    return Score(run.loss_sum / max(run.loss_count, 1.0), int(run.loss_count))


def fit(model_config: ModelConfig, train_config: TrainConfig, corpus: Corpus,
        checkpoint_dir=None, resume: bool = False, progress: bool = True,
        on_epoch=None, devices: int | None = None) -> FitResult:
    """Train, evaluating on the validation part after each epoch and checkpointing it.

    `on_epoch(record)` is called after every epoch with that epoch's history record.
    A KeyboardInterrupt (Ctrl-C, or SIGTERM turned into one by train.py) saves a
    checkpoint at the exact position reached and then propagates. `resume=True`
    continues from there to the same result as an uninterrupted run.
    `devices` is how many devices share each batch (None: every device JAX sees).
    """
    config = train_config
    parallel = make_data_parallel(devices, config.batch_size)
    steps_per_epoch = len(epoch_batches(corpus.train, config.batching, config.split,
                                        config.batch_size, config.num_steps,
                                        epoch_rng(config.seed, 0)))
    tx = make_optimizer(config, steps_per_epoch)
    run = Run(state=create_state(model_config, config, tx),
              carry=zero_carry(model_config, config.batch_size))
    vocab_chars = list(corpus.vocab.chars)

    manager = checkpoint.open_manager(checkpoint_dir) if checkpoint_dir else None
    if manager is not None and manager.latest_step() is not None:
        if not resume:
            manager.close()
            raise checkpoint.CheckpointError(
                f"{manager.directory} already contains a checkpoint (step "
                f"{manager.latest_step()}); pass --resume to continue it or choose another "
                "--checkpoint-dir")
        run, finished = restore_run(manager, run, model_config, config, vocab_chars)
        if finished:
            log.info("this run already finished (%d epochs, best val perplexity %.3f); "
                     "nothing to do", len(run.history), run.best)
            manager.close()
            return FitResult(run.state, run.history, run.best, finished=True)
    run.state, run.carry = parallel.put_replicated(run.state), parallel.put_carry(run.carry)

    log.info("model: %s cell, %d layer(s) x %d hidden, %s parameters, vocab %d",
             model_config.cell, model_config.num_layers, model_config.num_hiddens,
             f"{count_params(run.state.params):,}", model_config.vocab_size)
    log.info("data: %s train / %s val / %s test characters, %d steps of %d x %d per epoch, "
             "on %s", f"{len(corpus.train):,}", f"{len(corpus.val):,}",
             f"{len(corpus.test):,}", steps_per_epoch, config.batch_size, config.num_steps,
             describe(parallel))

    def save(finished: bool, val_perplexity: float) -> None:
        if manager is None:
            return
        meta = build_meta(model_config, config, vocab_chars, run.history, run.best, finished)
        meta["epoch_loss_sum"], meta["epoch_loss_count"] = run.loss_sum, run.loss_count
        if finished:
            meta["params_epoch"] = run.best_epoch
        checkpoint.save(manager, int(to_host(run.state.step)),
                        to_host(state_tree(run.state, run.carry, run.epoch, run.batch)), meta,
                        val_perplexity)

    def save_interrupted() -> None:
        """Checkpoint the position reached when Ctrl-C or SIGTERM arrives, wherever it is."""
        step = int(to_host(run.state.step))
        if manager is None or step == 0:
            return
        if manager.latest_step() == step:
            log.warning("interrupted: step %d is already saved; continue with --resume", step)
            return
        at_epoch_end = run.batch == 0 and bool(run.history) and run.history[-1]["step"] == step
        metric = run.history[-1]["val_perplexity"] if at_epoch_end else INTERRUPTED_METRIC
        save(False, metric)
        log.warning("interrupted: saved step %d (epoch %d, batch %d); continue with --resume",
                    step, run.epoch + 1, run.batch)

    carry_over = config.batching == "sequential" and config.split != "d2l"
    train_chunk = make_train_chunk(model_config, tx, carry_over,
                                   unroll=train_unroll(model_config, config.num_steps))
    elapsed_before = run.history[-1]["wall_time"] if run.history else 0.0
    started = time.perf_counter()
    stopped_early = False
    try:
        while run.epoch < config.epochs and not stopped_early:
            # Batches for this epoch: the same order in a resumed run.
            batches = epoch_batches(corpus.train, config.batching, config.split,
                                    config.batch_size, config.num_steps,
                                    epoch_rng(config.seed, run.epoch))
            if run.batch == 0:
                run.carry = parallel.put_carry(zero_carry(model_config, config.batch_size))
            epoch_start = time.perf_counter()
            train_score = train_epoch(run, train_chunk, batches, config, parallel, progress)
            epoch_seconds = time.perf_counter() - epoch_start

            # Evaluate, log and maybe sample.
            # One host copy of the parameters: evaluating replicated parameters would
            # repeat the same work on every device.
            params = to_host(run.state.params)
            val = evaluate(params, model_config, corpus.val, config.split, config.num_steps)
            check_finite(val.perplexity, "validation perplexity", run)
            improved = val.perplexity < run.best
            if improved:
                run.best_params = params
            record = {"epoch": run.epoch + 1, "step": int(to_host(run.state.step)),
                      "train_perplexity": train_score.perplexity,
                      "val_perplexity": val.perplexity, "val_bits_per_char": val.bits_per_char,
                      "chars_per_sec": train_score.num_chars / epoch_seconds,
                      "wall_time": elapsed_before + time.perf_counter() - started}
            run.history.append(record)
            run.epoch, run.batch = run.epoch + 1, 0
            log.info("epoch %3d  train ppl %7.3f  val ppl %7.3f (%.3f bpc)%s  %8.0f chars/s  "
                     "%6.1fs", record["epoch"], record["train_perplexity"],
                     record["val_perplexity"], record["val_bits_per_char"],
                     " *" if improved else "  ", record["chars_per_sec"], record["wall_time"])
            if config.sample_every and record["epoch"] % config.sample_every == 0:
                text = sample(params, model_config, corpus.vocab, config.preprocess,
                              SAMPLE_PREFIX, SAMPLE_CHARS, temperature=0.0).text
                log.info("sample: %r", SAMPLE_PREFIX + text)
            if on_epoch is not None:
                on_epoch(record)

            # Maybe stop early, then checkpoint.
            stopped_early = config.patience > 0 and run.epoch - run.best_epoch >= config.patience
            if stopped_early:
                log.info("stopping early: no better val perplexity for %d epochs", config.patience)
            finished = stopped_early or run.epoch == config.epochs
            metric = val.perplexity
            if finished and not improved and run.best_params is not None:
                # Ship the best epoch's parameters: the final checkpoint becomes the best
                # one too, so a finished run keeps a single checkpoint on disk.
                log.info("restoring the parameters of epoch %d (val perplexity %.3f) into the "
                         "final checkpoint", run.best_epoch, run.best)
                run.state = run.state.replace(params=parallel.put_replicated(run.best_params))
                metric = run.best
            save(finished, metric)
    except KeyboardInterrupt:
        save_interrupted()
        raise
    finally:
        # Orbax saves in the background: wait, so no save is cut off on exit.
        if manager is not None:
            manager.wait_until_finished()
            manager.close()
    return FitResult(run.state, run.history, run.best, finished=True, stopped_early=stopped_early)


def build_meta(model_config: ModelConfig, train_config: TrainConfig, vocab_chars: list[str],
               history: list, best: float, finished: bool) -> dict:
    return {"model_config": to_dict(model_config), "train_config": to_dict(train_config),
            "vocab": vocab_chars, "preprocess": train_config.preprocess, "history": history,
            "best_val_perplexity": best, "finished": finished}
