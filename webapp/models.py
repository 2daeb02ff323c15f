"""The checkpoints the app serves: discovery, loading and compilation before the first request."""

import dataclasses
import logging
import os
import pathlib
import time

from model import checkpoint
from model.app_support import generate, next_char_logits
from model.config import ModelConfig
from model.pretrained import Pretrained, load
from model.sampling import prepare_prefix
from webapp.limits import DEFAULT_PREFIX, MAX_CHARS

log = logging.getLogger("app")

ROOT = pathlib.Path(__file__).resolve().parents[1]  # the project folder, which contains app.py

CHECKPOINT_ENV = "CONCISE_RNN_CHECKPOINTS"
CELL_LABELS = {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One loaded checkpoint with the untrained network it started from."""

    name: str  # checkpoint directory name, which API callers pass as `cell`
    pretrained: Pretrained
    untrained_params: dict  # the same network at step 0
    history: tuple  # per-epoch records of the whole run, from the latest checkpoint
    latest_meta: dict

    @property
    def label(self) -> str:
        return CELL_LABELS.get(self.name, self.name)

    @property
    def config(self) -> ModelConfig:
        return self.pretrained.model_config


@dataclasses.dataclass(frozen=True)
class Models:
    """Every checkpoint the app serves, plus those that failed to load."""

    root: pathlib.Path
    entries: dict  # name -> Entry, in display order
    failures: dict  # name -> error message

    def choices(self) -> list[tuple[str, str]]:
        return [(entry.label, name) for name, entry in self.entries.items()]

    def default_name(self) -> str | None:
        return "lstm" if "lstm" in self.entries else next(iter(self.entries), None)


def checkpoint_root(flag: str | None) -> pathlib.Path:
    """Return the checkpoint root: the flag, else $CONCISE_RNN_CHECKPOINTS, else ./checkpoints."""
    value = flag or os.environ.get(CHECKPOINT_ENV)
    if not value:
        return ROOT / "checkpoints"
    path = pathlib.Path(value).expanduser()
    return path if path.is_absolute() else ROOT / path


def checkpoint_dirs(root: pathlib.Path) -> list[pathlib.Path]:
    """List the run directories under `root`: rnn, gru, lstm first, then the others by name."""
    if not root.is_dir():
        return []
    order = list(CELL_LABELS)
    dirs = [path for path in root.iterdir() if path.is_dir() and not path.name.startswith(".")
            and not path.name.endswith(".previous")]
    return sorted(dirs, key=lambda path: (order.index(path.name) if path.name in order
                                          else len(order), path.name))


def read_latest_meta(directory: pathlib.Path) -> dict:
    """Return the metadata of the latest checkpoint, whose history covers the whole run."""
    manager = checkpoint.open_manager(directory, read_only=True)
    try:
        return checkpoint.restore_meta(manager, checkpoint.choose_step(manager, "latest"))
    finally:
        manager.close()


def load_models(root: pathlib.Path) -> Models:
    """Load every checkpoint under `root`, logging each one that fails instead of stopping."""
    entries, failures = {}, {}
    for directory in checkpoint_dirs(root):
        try:
            pretrained = load(directory)
            latest = read_latest_meta(directory)
            entries[directory.name] = Entry(
                name=directory.name, pretrained=pretrained,
                untrained_params=pretrained.untrained_params(),
                history=tuple(latest.get("history", ())), latest_meta=latest)
        # Orbax and damaged metadata raise many exception types; one bad run must not stop the app.
        except Exception as error:  # noqa: BLE001
            failures[directory.name] = f"{type(error).__name__}: {error}"
            log.error("checkpoint %s failed to load: %s", directory.name, failures[directory.name])
            continue
        log.info("loaded %s: %s, step %d", directory.name, pretrained.model_config, pretrained.step)
    if not entries:
        log.warning("no checkpoint loaded from %s. Train one with `python train.py`", root)
    return Models(root=root, entries=entries, failures=failures)


def warm_up(models: Models) -> None:
    """Compile generation and scoring once per model config, before the first request.

    NOTE: only the shortest input bucket is compiled here. A prefix longer than
    64 characters or a longer scored text compiles its bucket on first use, in
    about 2 s on 2 shared CPU cores.
    """
    seen = set()
    for entry in models.entries.values():
        if entry.config in seen:
            continue
        seen.add(entry.config)
        started = time.perf_counter()
        pretrained = entry.pretrained
        # Both parameter sets: restored arrays are committed to a device and fresh
        # ones are not, and jit compiles each kind separately.
        for params in (entry.untrained_params, pretrained.params):
            generate(params, entry.config, pretrained.vocab, pretrained.preprocess,
                     DEFAULT_PREFIX, MAX_CHARS, seed=0, temperature=1.0, top_k=0)
        ids = pretrained.vocab.encode(prepare_prefix(DEFAULT_PREFIX, pretrained.vocab,
                                                     pretrained.preprocess).primer)
        next_char_logits(pretrained.params, entry.config, ids)
        log.info("compiled %s in %.1f s", entry.name, time.perf_counter() - started)
