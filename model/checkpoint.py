"""Orbax checkpoints that stand alone: arrays plus a JSON item with everything to use them.

Layout: `DIR/<step>/state` contains the arrays (params, optimizer state, step,
RNG key, carry and data position) and `DIR/<step>/meta` the JSON metadata
(model and training config, vocabulary, history, library versions). The
manager keeps the latest checkpoint (to resume) and the best one by
validation perplexity (to generate from).

Orbax writes each step into `DIR/<step>.orbax-checkpoint-tmp...` and renames it
to `DIR/<step>` when every file is written, so a process killed in the middle
of a save leaves only that temporary folder. Managers never list it as a step,
and `open_manager` removes it before a run writes to the directory again.
"""

import importlib.metadata
import logging
import os
import pathlib
import platform
import shutil
import sys
import tempfile

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
VERSIONED_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")
# Part of the name of a step folder whose save has not finished (Orbax's atomic rename).
TMP_DIR_SUFFIX = ocp.path.atomicity_types.TMP_DIR_SUFFIX
REQUIRED_META_KEYS = ("model_config", "train_config", "vocab", "history")
DAMAGED_FIX = "restore the folder from a copy or train the model again"


class CheckpointError(Exception):
    """A checkpoint directory that is missing, empty, unreadable or incompatible."""


def library_versions() -> dict:
    versions = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def unfinished_saves(directory) -> list[pathlib.Path]:
    """List the temporary folders that interrupted saves left in `directory`, by name."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        return []
    return sorted(path for path in directory.iterdir()
                  if TMP_DIR_SUFFIX in path.name and path.is_dir() and not path.is_symlink())


def remove_unfinished_saves(directory) -> None:
    """Delete the folders of saves that never finished, logging each by name.

    NOTE: a second process saving into the same directory at the same time would
    lose its save in progress; one run per directory is assumed.
    """
    for path in unfinished_saves(directory):
        log.warning("removing %s: a save that never finished, left by a process that stopped "
                    "during it", path)
        shutil.rmtree(path)


def check_writable(directory: pathlib.Path) -> None:
    """Create `directory` if needed and make sure files can be written in it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # A real write, because permission bits alone miss read-only file systems and ACLs.
        os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=directory))
    except OSError as error:
        raise CheckpointError(
            f"cannot write to the checkpoint directory {directory} ({error.strerror}); choose "
            "another --checkpoint-dir or make this one writable") from None


def open_manager(directory, read_only: bool = False) -> ocp.CheckpointManager:
    """Open (or create) a manager that keeps the latest and the best checkpoint.

    A writable manager first removes the folders of unfinished saves (see the module
    docstring). Raises CheckpointError when the directory is missing (read-only), a
    file, not writable, or contains checkpoint files that Orbax cannot parse.
    """
    directory = pathlib.Path(directory).expanduser().resolve()
    if directory.is_file():
        raise CheckpointError(f"{directory} is a file; pass the checkpoint folder instead")
    if read_only and not directory.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {directory}")
    if not read_only:
        check_writable(directory)
        if jax.process_index() == 0:  # in a multi-process run, process 0 owns the cleanup
            remove_unfinished_saves(directory)
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=1),
        # reverse=True sorts descending, so the lowest perplexity is the one kept.
        checkpoint_managers.BestN(get_metric_fn=lambda metrics: metrics["val_perplexity"],
                                  reverse=True, n=1, keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=None if read_only else policy, read_only=read_only,
        best_fn=lambda metrics: metrics["val_perplexity"], best_mode="min",
        create=not read_only, enable_async_checkpointing=True)
    try:
        return ocp.CheckpointManager(directory, item_names=("state", "meta"), options=options)
    except (OSError, ValueError) as error:
        # The manager reads every step's metrics file when it opens, and a damaged
        # one raises json.JSONDecodeError (a ValueError) without naming the file.
        raise CheckpointError(
            f"could not open the checkpoints in {directory}: {type(error).__name__}: "
            f"{first_line(error)}; a file in it is damaged, so {DAMAGED_FIX}") from None


def save(manager: ocp.CheckpointManager, step: int, state: dict, meta: dict,
         val_perplexity: float) -> None:
    """Start an asynchronous save; call `manager.wait_until_finished()` before exiting."""
    if not np.isfinite(val_perplexity):
        raise ValueError(f"refusing to save a checkpoint with val perplexity {val_perplexity}")
    state = jax.device_get(state)
    meta = dict(meta, format_version=FORMAT_VERSION, versions=library_versions())
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               meta=ocp.args.JsonSave(meta)),
                 metrics={"val_perplexity": float(val_perplexity)})


def choose_step(manager: ocp.CheckpointManager, which: str) -> int:
    """Return the step of the "best" or "latest" checkpoint, or raise CheckpointError."""
    step = manager.best_step() if which == "best" else manager.latest_step()
    if step is None:
        step = manager.latest_step()
    if step is None:
        unfinished = [path.name for path in unfinished_saves(manager.directory)]
        found = (f"it contains only the unfinished save {', '.join(unfinished)}, which is "
                 "never loaded" if unfinished else "it contains no step folder")
        raise CheckpointError(
            f"no complete checkpoint in {manager.directory}; {found}. Train one with "
            f"`python train.py --checkpoint-dir {manager.directory}`")
    return step


def first_line(error: Exception) -> str:
    """Return the first line of an error message, without the TensorStore spec it may append."""
    lines = str(error).strip().splitlines()
    if not lines:
        return ""
    line = lines[0]
    # TensorStore appends its spec, sometimes as a bound-method repr; both are noise here.
    for marker in (" [tensorstore_spec", " <bound method", " TensorStore({"):
        line = line.split(marker, 1)[0]
    return line


class _DropDuplicateRestoreErrors(logging.Filter):
    """Drop asyncio's "exception was never retrieved" records about already reported folders.

    Orbax reads the arrays of a step in concurrent asyncio tasks. When the files are
    damaged, the first failure is raised (and reported here as CheckpointError), and
    every other task's failure is logged later with a traceback, whenever its future
    is garbage collected. Records that name a step folder whose failure was already
    raised are duplicates, so they are dropped; all other asyncio records pass.
    """

    def __init__(self):
        super().__init__()
        self.reported: set[str] = set()  # step folders whose restore failed

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "exception was never retrieved" not in message:
            return True
        return not any(folder in message for folder in self.reported)


_duplicate_restore_errors = _DropDuplicateRestoreErrors()
logging.getLogger("asyncio").addFilter(_duplicate_restore_errors)


def _drop_closed_loop_callbacks(unraisable, previous=sys.unraisablehook) -> None:
    """Drop "Event loop is closed" errors from reads still running after a failed restore.

    When a damaged step fails to restore, Orbax closes its event loop while
    TensorStore may still be finishing reads of the same step. Their callbacks
    then fail in another thread, and Python prints each one as an ignored
    exception with a traceback. The restore error was already raised once, so
    these are dropped; every other unraisable exception goes to the previous hook.
    """
    error = unraisable.exc_value
    if (_duplicate_restore_errors.reported and isinstance(error, RuntimeError)
            and str(error) == "Event loop is closed"):
        log.debug("dropped a late read callback of a failed restore: %s", error)
        return
    previous(unraisable)


sys.unraisablehook = _drop_closed_loop_callbacks


def _restore(manager: ocp.CheckpointManager, step: int, args) -> tuple[dict | None, str]:
    """Run `manager.restore`; return (restored, "") or (None, the error in one line)."""
    try:
        return manager.restore(step, args=args), ""
    except Exception as error:  # Orbax raises several types for damaged or mismatched files
        folder = pathlib.Path(manager.directory) / str(step)
        # TensorStore names files relative to the run's parent, e.g. "lstm/310/state/".
        _duplicate_restore_errors.reported.update({str(folder), f"{folder.parent.name}/{step}/"})
        return None, f"{type(error).__name__}: {first_line(error)}"


def restore_meta(manager: ocp.CheckpointManager, step: int) -> dict:
    """Restore the JSON metadata of `step`, checking that it contains what loading needs."""
    path = pathlib.Path(str(step), "meta", "metadata")  # relative to the directory
    restored, error = _restore(manager, step, ocp.args.Composite(meta=ocp.args.JsonRestore()))
    if restored is not None:
        meta = restored["meta"]
        missing = ([key for key in REQUIRED_META_KEYS if key not in meta]
                   if isinstance(meta, dict) else list(REQUIRED_META_KEYS))
        if not missing:
            return dict(meta)
        error = f"it lacks {', '.join(missing)}"
    raise CheckpointError(
        f"could not read the metadata of step {step} in {manager.directory}: {path}: {error}; "
        f"{DAMAGED_FIX}")


def shape_mismatches(manager: ocp.CheckpointManager, step: int, target: dict) -> list[str]:
    """List the parameter and carry arrays whose stored shape differs from `target`'s.

    Checked before restoring: a mismatch found by the restore itself fails inside
    Orbax's concurrent reads, whose other failures then surface later as logged
    tracebacks. Returns [] when the stored metadata cannot be read, so the restore
    reports the damage.
    """
    try:
        stored = ocp.StandardCheckpointer().metadata(
            pathlib.Path(manager.directory) / str(step) / "state").item_metadata
        stored_shapes = {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in
                         jax.tree_util.tree_leaves_with_path(
                             {key: stored[key] for key in ("params", "carry")})}
    except Exception:  # noqa: BLE001 - damaged metadata is reported by the restore
        return []
    mismatches = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(
            {key: target[key] for key in ("params", "carry")}):
        name = jax.tree_util.keystr(path)
        shape = stored_shapes.get(name)
        if shape != tuple(np.shape(leaf)):
            mismatches.append(f"{name} is {shape if shape is not None else 'missing'}, "
                              f"expected {tuple(np.shape(leaf))}")
    return mismatches


def restore_state(manager: ocp.CheckpointManager, step: int, target: dict) -> dict:
    """Restore the arrays of `step` with the structure, dtypes and (CPU) placement of `target`."""
    mismatches = shape_mismatches(manager, step, target)
    if mismatches:
        raise CheckpointError(
            f"could not restore step {step} from {manager.directory}: the stored arrays do not "
            f"match the model its metadata describes ({'; '.join(mismatches[:3])}); the files of "
            f"{pathlib.Path(manager.directory) / str(step)} are damaged or do not match this "
            f"model, so {DAMAGED_FIX}")
    restored, error = _restore(manager, step,
                               ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    if restored is None:
        raise CheckpointError(
            f"could not restore step {step} from {manager.directory}: {error}; the files of "
            f"{pathlib.Path(manager.directory) / str(step)} are damaged or do not match this "
            f"model, so {DAMAGED_FIX}")
    return restored["state"]
