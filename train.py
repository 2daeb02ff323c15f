"""Train a character-level RNN language model and write Orbax checkpoints.

    python train.py                      # refresh checkpoints/lstm with the default preset
    python train.py --cell gru           # the same for the GRU (checkpoints/gru)
    python train.py --preset d2l         # the book's RNN settings (checkpoints/rnn-d2l)
    python train.py --data my.txt --preprocess raw --checkpoint-dir runs/mine
    python train.py --prepared data/big  # a corpus encoded by `python -m model.prepare`
    python train.py --devices 4          # split each batch over 4 devices
"""

import argparse
import dataclasses
import logging
import os
import pathlib
import shutil
import signal
import sys

import jax
from jax.experimental import multihost_utils

from model import checkpoint
from model.config import (BATCHINGS, CELLS, D2L_PRESET, OPTIMIZERS, PREPROCESS_MODES, SPLITS,
                          ModelConfig, TrainConfig)
from model.data import (TIME_MACHINE_SHA1, Corpus, CorpusError, build_corpus, find_corpus,
                        read_corpus, sha1_of)
from model.parallel import coordinator_settings, initialize_distributed
from model.prepare import load_prepared, read_meta
from model.train_lib import NonFiniteLossError
from model.trainer import ConfigMismatchError, fit

log = logging.getLogger("train")
ROOT = pathlib.Path(__file__).resolve().parent
TIME_MACHINE_BYTES = 178_979

# The shipped weights: per-cell settings chosen on the Time Machine's validation part.
DEFAULT_PRESET = {
    "rnn": dict(num_hiddens=256, num_layers=2, dropout=0.3, input_dropout=0.0,
                recurrent_dropout=0.1, lr=2e-3, epochs=100),
    "gru": dict(num_hiddens=256, num_layers=2, dropout=0.4, input_dropout=0.05,
                recurrent_dropout=0.25, lr=3e-3, epochs=85),
    "lstm": dict(num_hiddens=256, num_layers=2, dropout=0.4, input_dropout=0.05,
                 recurrent_dropout=0.25, lr=3e-3, epochs=70),
    "scratch": dict(num_hiddens=256, num_layers=1, dropout=0.3, lr=2e-3, epochs=40),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train a character-level RNN, GRU or LSTM language model. Flags left out "
                    "take their value from --preset; each help line shows the default "
                    "preset's value for the LSTM and the d2l preset's value.")
    parser.add_argument("--preset", choices=("default", "d2l"), default="default",
                        help="starting settings: 'default' trains the shipped weights, 'd2l' "
                             "the book's RNN (hidden 32, batch 1024, 32 steps, SGD lr 1, "
                             "clip 1, 100 epochs, d2l preprocessing and split)")

    data = parser.add_argument_group("data")
    data.add_argument("--data", help="UTF-8 text file to train on; default: the Time Machine "
                                     "from --data-dir, downloaded there if missing")
    data.add_argument("--prepared", metavar="DIR",
                      help="train from a corpus encoded by `python -m model.prepare` into DIR, "
                           "memory-mapped rather than loaded (its preprocessing mode applies)")
    data.add_argument("--data-dir", help="cache folder for the downloaded Time Machine "
                                         "(default: ~/.cache/concise_rnn)")
    data.add_argument("--preprocess", choices=PREPROCESS_MODES,
                      help="'d2l': lowercase letters and single spaces; 'raw': text as it is")
    data.add_argument("--split", choices=SPLITS,
                      help="'full': 90%%/5%%/5%% train/val/test; 'd2l': the book's 10,000 "
                           "training and 5,000 validation windows")
    data.add_argument("--batching", choices=BATCHINGS,
                      help="'sequential': contiguous rows, carry passed between batches; "
                           "'random': shuffled windows from a zero carry")

    model = parser.add_argument_group("model")
    model.add_argument("--cell", choices=CELLS,
                       help="recurrent cell; 'scratch' is the hand-written tanh RNN "
                            "(default: lstm, or rnn with --preset d2l)")
    model.add_argument("--num-hiddens", type=int, help="hidden units per layer")
    model.add_argument("--num-layers", type=int, help="stacked recurrent layers")
    model.add_argument("--dropout", type=float,
                       help="drop probability between stacked layers and on the last layer's "
                            "output, 0 = off")
    model.add_argument("--input-dropout", type=float,
                       help="drop probability of each input character, 0 = off")
    model.add_argument("--recurrent-dropout", type=float,
                       help="drop probability of each hidden unit fed back into the cell, one "
                            "mask per sequence, 0 = off")

    optim = parser.add_argument_group("optimization")
    optim.add_argument("--batch-size", type=int, help="sequences per step")
    optim.add_argument("--num-steps", type=int,
                       help="characters per training sequence")
    optim.add_argument("--optimizer", choices=OPTIMIZERS, help="optimizer")
    optim.add_argument("--lr", type=float, help="peak learning rate")
    optim.add_argument("--lr-schedule", choices=("constant", "cosine"),
                       help="'cosine': linear warm-up for --warmup-epochs, then cosine decay "
                            "to lr x 0.02 at the last epoch")
    optim.add_argument("--warmup-epochs", type=float, help="warm-up length in epochs")
    optim.add_argument("--weight-decay", type=float,
                       help="decoupled weight decay coefficient, adamw only, 0 = off")
    optim.add_argument("--grad-clip", type=float,
                       help="maximum global gradient norm, 0 = no clipping")
    optim.add_argument("--epochs", type=int, help="passes over the training text")
    optim.add_argument("--patience", type=int,
                       help="stop after this many epochs without a better validation "
                            "perplexity, 0 = never")
    optim.add_argument("--seed", type=int, help="seed for initialization, dropout and batch "
                                                "order")
    optim.add_argument("--steps-per-call", type=int,
                       help="optimizer steps fused into one jitted call")

    devices = parser.add_argument_group(
        "devices", "data parallelism: each batch is split over the devices, parameters are "
                   "replicated; several hosts join with the three coordinator settings")
    devices.add_argument("--devices", type=int,
                         help="devices to split each batch over; --batch-size must be a "
                              "multiple of it (default: every device JAX sees)")
    devices.add_argument("--coordinator", metavar="HOST:PORT",
                         help="address of process 0 for multi-process training (or set "
                              "JAX_COORDINATOR_ADDRESS); needs --num-processes and --process-id")
    devices.add_argument("--num-processes", type=int,
                         help="processes in a multi-process run (or JAX_NUM_PROCESSES)")
    devices.add_argument("--process-id", type=int,
                         help="this process's index, 0 to N-1; 0 writes the logs "
                              "(or JAX_PROCESS_ID)")

    output = parser.add_argument_group("checkpoints and logging")
    output.add_argument("--checkpoint-dir",
                        help="where checkpoints go (default: checkpoints/<cell>, or "
                             "checkpoints/rnn-d2l with --preset d2l, when training on the "
                             "Time Machine; runs/<data file name>-<cell> for another --data)")
    output.add_argument("--resume", action="store_true",
                        help="continue the run in --checkpoint-dir from its latest checkpoint")
    output.add_argument("--overwrite", action="store_true",
                        help="delete an unfinished run in --checkpoint-dir and start over")
    output.add_argument("--sample-every", type=int,
                        help="epochs between greedy samples in the log, 0 = never")
    output.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_preset_defaults(parser)
    parser.epilog = "default preset per cell: " + "; ".join(
        f"{cell}: " + ", ".join(f"{key}={value}" for key, value in values.items())
        for cell, values in DEFAULT_PRESET.items())
    return parser


def preset_values(preset: str, cell: str) -> dict:
    """Return every model and training setting of a preset, with dataclass defaults filled in."""
    values = {field.name: field.default for field in dataclasses.fields(TrainConfig)}
    values.update({field.name: field.default for field in dataclasses.fields(ModelConfig)
                   if field.name not in ("vocab_size", "cell")})
    values.update(D2L_PRESET if preset == "d2l" else DEFAULT_PRESET[cell])
    return values


def add_preset_defaults(parser: argparse.ArgumentParser) -> None:
    """Append "(default: X; d2l preset: Y)" to the help of every preset-backed flag."""
    lstm, d2l = preset_values("default", "lstm"), preset_values("d2l", "rnn")
    for action in parser._actions:
        name = action.dest
        if name in MODEL_FLAGS + TRAIN_FLAGS:
            action.help += f" (default: {lstm[name]}; d2l preset: {d2l[name]})"


MODEL_FLAGS = ("num_hiddens", "num_layers", "dropout", "input_dropout", "recurrent_dropout")
TRAIN_FLAGS = ("batch_size", "num_steps", "optimizer", "lr", "lr_schedule", "warmup_epochs",
               "weight_decay", "grad_clip", "epochs", "patience", "seed", "steps_per_call",
               "preprocess", "split", "batching", "sample_every")


def resolve_settings(args) -> tuple[str, dict, TrainConfig]:
    """Merge the preset with the flags given explicitly (flags win).

    Returns the cell, the model settings other than vocab_size, and the train config.
    """
    cell = args.cell or ("rnn" if args.preset == "d2l" else "lstm")
    values = preset_values(args.preset, cell)
    for name in MODEL_FLAGS + TRAIN_FLAGS:
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    model_values = {name: values.pop(name) for name in MODEL_FLAGS}
    return cell, model_values, TrainConfig(**values)


def is_time_machine(path: pathlib.Path) -> bool:
    return path.stat().st_size == TIME_MACHINE_BYTES and sha1_of(path) == TIME_MACHINE_SHA1


def default_directory(args, cell: str) -> pathlib.Path:
    """Return --checkpoint-dir, else the shipped folder for the Time Machine, else runs/<file>-<cell>.

    Training on another corpus never touches the shipped checkpoints unless asked to.
    """
    if args.checkpoint_dir:
        directory = pathlib.Path(args.checkpoint_dir).expanduser().resolve()
        if directory.exists() and not directory.is_dir():
            raise checkpoint.CheckpointError(
                f"--checkpoint-dir {directory} is a file, not a folder; choose another path")
        return directory
    name = f"{cell}-d2l" if args.preset == "d2l" else cell
    if args.prepared:
        return ROOT / "runs" / f"{pathlib.Path(args.prepared).resolve().name}-{name}"
    if args.data and not is_time_machine(pathlib.Path(args.data).expanduser()):
        return ROOT / "runs" / f"{pathlib.Path(args.data).stem}-{name}"
    return ROOT / "checkpoints" / name


def prepare_directory(directory: pathlib.Path, resume: bool, overwrite: bool) -> None:
    """Make way for a new run in `directory`, never discarding unfinished work silently.

    A finished run is moved to `<directory>.previous`. An unfinished one needs
    --resume (continue it) or --overwrite (discard it).
    """
    if resume or not directory.is_dir() or not any(directory.iterdir()):
        return
    if overwrite:
        log.info("--overwrite: deleting %s", directory)
        shutil.rmtree(directory)
        return
    manager = checkpoint.open_manager(directory, read_only=True)
    try:
        step = checkpoint.choose_step(manager, "latest")
        meta = checkpoint.restore_meta(manager, step)
    finally:
        manager.close()
    if not meta.get("finished"):
        done = len(meta.get("history", []))
        total = meta.get("train_config", {}).get("epochs", "?")
        raise checkpoint.CheckpointError(
            f"{directory} contains an unfinished run ({done} of {total} epochs); pass --resume to "
            "continue it or --overwrite to discard it")
    backup = directory.with_name(directory.name + ".previous")
    if backup.exists():
        shutil.rmtree(backup)
    directory.rename(backup)
    log.info("%s contained a finished run; moved it to %s", directory, backup)


def join_processes(args) -> None:
    """Join a multi-process run when coordinator settings are given; quiet all but process 0."""
    initialize_distributed(coordinator_settings(args.coordinator, args.num_processes,
                                                args.process_id))
    if jax.process_index() != 0:
        logging.getLogger().setLevel(logging.WARNING)


def load_corpus(args, train_config: TrainConfig) -> tuple[Corpus, TrainConfig]:
    """Read --prepared (memory-mapped) or --data / the Time Machine (in memory).

    A prepared corpus fixes the preprocessing mode, which train_config then records.
    """
    if args.prepared:
        if args.data:
            raise ValueError("pass either --data or --prepared, not both")
        mode = read_meta(args.prepared)["preprocess"]
        if args.preprocess and args.preprocess != mode:
            raise ValueError(f"--preprocess {args.preprocess} differs from the prepared "
                             f"corpus's mode {mode!r}; leave --preprocess out or prepare it "
                             "again")
        train_config = dataclasses.replace(train_config, preprocess=mode)
        corpus = load_prepared(args.prepared, train_config.split, train_config.num_steps)
        log.info("data: %s, memory-mapped", pathlib.Path(args.prepared).resolve())
        return corpus, train_config
    text = read_corpus(find_corpus(args.data, args.data_dir))
    return build_corpus(text, train_config.preprocess, train_config.split,
                        train_config.num_steps), train_config


def flag_message(error: ValueError) -> str:
    """Spell a setting name that starts the message as its flag (num_hiddens as --num-hiddens)."""
    message = str(error)
    name = message.split(" ", 1)[0]
    if name in MODEL_FLAGS + TRAIN_FLAGS:
        return "--" + name.replace("_", "-") + message[len(name):]
    return message


def raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM (from `kill` or a job scheduler) stops training the way Ctrl-C does:
    # the position reached is checkpointed before the process exits.
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", force=True)
    logging.getLogger("absl").setLevel(logging.ERROR)
    # JAX logs at INFO that it found no TPU library, on every CPU-only machine.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    try:
        cell, model_values, train_config = resolve_settings(args)
        join_processes(args)
        corpus, train_config = load_corpus(args, train_config)
        directory = default_directory(args, cell)
        model_config = ModelConfig(vocab_size=len(corpus.vocab), cell=cell, **model_values)
        if jax.process_index() == 0:
            prepare_directory(directory, args.resume, args.overwrite)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("checkpoint directory ready")
        log.info("checkpoints: %s", directory)
        result = fit(model_config, train_config, corpus, checkpoint_dir=directory,
                     resume=args.resume, progress=not args.no_progress and
                     jax.process_index() == 0, devices=args.devices)
    except KeyboardInterrupt:
        log.warning("training interrupted; run the same command with --resume to continue")
        return 130
    except ValueError as error:
        log.error("invalid setting: %s", flag_message(error))
        return 2
    except (CorpusError, checkpoint.CheckpointError, ConfigMismatchError,
            NonFiniteLossError) as error:
        log.error("%s", error)
        return 1
    except OSError as error:
        log.error("%s; check that the path exists and that you may read and write it", error)
        return 1
    log.info("done: best val perplexity %.3f after %d epochs; checkpoints in %s",
             result.best_val_perplexity, len(result.history), directory)
    return 0


if __name__ == "__main__":
    exit_code = main()
    if exit_code == 130:
        # NOTE: after an interrupt XLA may still be running the abandoned train step in
        # its own threads, and tearing the interpreter down under it crashed with a
        # segmentation fault in some runs. The checkpoint is on disk by now (fit waits
        # for Orbax), so leave without the teardown.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)
    sys.exit(exit_code)
