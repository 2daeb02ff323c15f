"""The checkpoints the app serves: discovery, loading and compilation before the first request."""

import dataclasses
import logging
import os
import pathlib
import threading
import time

from model import checkpoint
from model.app_support import CHUNK_CHARS, generate, next_char_logits, sampling_keys
from model.config import ModelConfig
from model.pretrained import Pretrained, load
from model.sampling import prepare_prefix
from webapp.limits import DEFAULT_PREFIX, MAX_CHARS, RAW_DEFAULT_PREFIX

log = logging.getLogger("app")

ROOT = pathlib.Path(__file__).resolve().parents[1]  # the project folder, which contains app.py

CHECKPOINT_ENV = "CONCISE_RNN_CHECKPOINTS"
CELL_LABELS = {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}


def checkpoint_label(name: str, cell: str) -> str:
    """Return the label users see for checkpoint directory `name` holding a `cell` model.

    The cell's name becomes its label and the rest of the directory name follows it:
    "lstm" is "LSTM", "lstm-shakespeare" is "LSTM · Shakespeare" and "rnn-d2l" is
    "RNN · d2l". A name without the cell in it is shown as it is.
    """
    parts = name.split("-")
    if cell not in parts:
        return name
    parts.remove(cell)
    label = CELL_LABELS.get(cell, cell)
    if not parts:
        return label
    rest = " ".join(parts)
    if parts[0].isalpha():
        rest = rest[0].upper() + rest[1:]
    return f"{label} · {rest}"


@dataclasses.dataclass(frozen=True)
class Entry:
    """One loaded checkpoint with the untrained network it started from."""

    name: str  # checkpoint directory name, which API callers pass as `cell`
    pretrained: Pretrained
    history: tuple  # per-epoch records of the whole run, from the latest checkpoint
    latest_meta: dict
    _untrained: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False,
                                              compare=False)

    @property
    def untrained_params(self) -> dict:
        """The same network at step 0, initialized on first use and then kept.

        Initializing takes about a second per model, so the app does it after it
        starts serving (see `warm_up`) rather than while loading.
        """
        with self._lock:
            if "params" not in self._untrained:
                self._untrained["params"] = self.pretrained.untrained_params()
            return self._untrained["params"]

    @property
    def label(self) -> str:
        return checkpoint_label(self.name, self.config.cell)

    @property
    def config(self) -> ModelConfig:
        return self.pretrained.model_config

    @property
    def default_prefix(self) -> str:
        """The prefix offered first: a speaker's name for a model of raw text, else prose."""
        if self.pretrained.preprocess == "raw" and all(
                char in self.pretrained.vocab for char in RAW_DEFAULT_PREFIX):
            return RAW_DEFAULT_PREFIX
        return DEFAULT_PREFIX


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


def read_latest(directory: pathlib.Path) -> tuple[int, dict]:
    """Return the latest step and its metadata, whose history covers the whole run."""
    manager = checkpoint.open_manager(directory, read_only=True)
    try:
        step = checkpoint.choose_step(manager, "latest")
        return step, checkpoint.restore_meta(manager, step)
    finally:
        manager.close()


def short_error(error: Exception, directory: pathlib.Path | None = None,
                max_chars: int = 300) -> str:
    """Return the error's type and the first line of its message, at most `max_chars` long.

    With `directory`, its path is replaced by its name, so a page can show the message.
    """
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}"
    if directory is not None:
        text = text.replace(str(directory.resolve()), directory.name)
    return text if len(text) <= max_chars else text[:max_chars - 1] + "…"


def load_entry(directory: pathlib.Path) -> Entry:
    """Load the best complete checkpoint of one run and check it against its own config."""
    pretrained = load(directory)
    if len(pretrained.vocab) != pretrained.model_config.vocab_size:
        raise checkpoint.CheckpointError(
            f"the vocabulary of step {pretrained.step} has {len(pretrained.vocab)} characters, "
            f"but its model config expects {pretrained.model_config.vocab_size}")
    latest_step, latest = read_latest(directory)
    entry = Entry(name=directory.name, pretrained=pretrained, history=tuple(latest.get("history", ())), latest_meta=latest)
    config = pretrained.model_config
    log.info("loaded %s (%s) from step %d (latest step %d): %s, %d layer(s) of %d units, %s "
             "preprocessing, %d characters", entry.name,
             entry.label, pretrained.step, latest_step, config.cell, config.num_layers,
             config.num_hiddens, pretrained.preprocess, config.vocab_size)
    return entry


def load_models(root: pathlib.Path) -> Models:
    """Load every checkpoint under `root`, logging each one that fails instead of stopping."""
    entries, failures = {}, {}
    for directory in checkpoint_dirs(root):
        # Orbax renames a step folder into place only when its save is complete, so the
        # temporary folder of a killed save is never listed as a step, and never loaded.
        for path in checkpoint.unfinished_saves(directory):
            log.warning("checkpoint %s: ignoring %s, a save that did not finish",
                        directory.name, path.name)
        try:
            entries[directory.name] = load_entry(directory)
        # Orbax and damaged metadata raise many exception types; one bad run must not stop the app.
        except Exception as error:  # noqa: BLE001
            log.error("checkpoint %s failed to load and is not served: %s", directory.name,
                      short_error(error))
            # The page names the folder only, not where it is on the server.
            failures[directory.name] = short_error(error, directory)
    if not entries:
        log.warning("no checkpoint loaded from %s. Train one with `python train.py`", root)
    return Models(root=root, entries=entries, failures=failures)


def warm_up(models: Models) -> None:
    """Initialize the untrained networks and compile generation and scoring per model config.

    The default model goes first. `app.py` runs this in a thread while the page is
    already served. A request that comes earlier initializes or compiles what it
    needs itself, which takes a few seconds once.

    NOTE: only the shortest input bucket is compiled here. A prefix longer than
    64 characters or a longer scored text compiles its bucket on first use, in
    about 2 s on 2 shared CPU cores.
    """
    started_all, seen = time.perf_counter(), set()
    default = models.default_name()
    # One key split per power of two up to the longest request.
    for count in range(CHUNK_CHARS.bit_length() - 1, MAX_CHARS.bit_length() + 1):
        sampling_keys(0, 1 << count)
    for entry in sorted(models.entries.values(), key=lambda entry: entry.name != default):
        started = time.perf_counter()
        entry.untrained_params  # noqa: B018  (initializes and keeps them)
        if entry.config in seen:
            continue
        seen.add(entry.config)
        pretrained = entry.pretrained
        # One piece compiles every call that generation makes for this config. The
        # untrained arrays sit on the same device as the restored ones, so jit
        # compiles once for both.
        generate(pretrained.params, entry.config, pretrained.vocab, pretrained.preprocess,
                 DEFAULT_PREFIX, CHUNK_CHARS, seed=0, temperature=1.0, top_k=0)
        ids = pretrained.vocab.encode(prepare_prefix(DEFAULT_PREFIX, pretrained.vocab,
                                                     pretrained.preprocess).primer)
        next_char_logits(pretrained.params, entry.config, ids)
        log.info("compiled %s in %.1f s", entry.name, time.perf_counter() - started)
    log.info("%d model(s) warmed up in %.1f s", len(models.entries),
             time.perf_counter() - started_all)
