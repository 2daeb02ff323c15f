"""Orbax checkpoints that stand alone: arrays plus a JSON item with everything to use them.

Layout: `DIR/<step>/state` contains the arrays (params, optimizer state, step,
RNG key, carry and data position) and `DIR/<step>/meta` the JSON metadata
(model and training config, vocabulary, history, library versions). The
manager keeps the latest checkpoint (to resume) and the best one by
validation perplexity (to generate from).
"""

import importlib.metadata
import logging
import pathlib
import platform

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
VERSIONED_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


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


def open_manager(directory, read_only: bool = False) -> ocp.CheckpointManager:
    """Open (or create) a manager that keeps the latest and the best checkpoint."""
    directory = pathlib.Path(directory).expanduser().resolve()
    if read_only and directory.is_file():
        raise CheckpointError(f"{directory} is a file; pass the checkpoint folder instead")
    if read_only and not directory.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {directory}")
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
    return ocp.CheckpointManager(directory, item_names=("state", "meta"), options=options)


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
        raise CheckpointError(f"no complete checkpoint in {manager.directory}; "
                              "train one with `python train.py --checkpoint-dir DIR`")
    return step


def restore_meta(manager: ocp.CheckpointManager, step: int) -> dict:
    try:
        restored = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    except Exception as error:  # Orbax raises several types for damaged files
        raise CheckpointError(
            f"could not read the metadata of step {step} in {manager.directory}: {error}") from error
    return dict(restored["meta"])


def restore_state(manager: ocp.CheckpointManager, step: int, target: dict) -> dict:
    """Restore the arrays of `step` with the structure, dtypes and (CPU) placement of `target`."""
    try:
        restored = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    except Exception as error:  # Orbax raises several types for damaged or mismatched files
        raise CheckpointError(
            f"could not restore step {step} from {manager.directory}: {error}") from error
    return restored["state"]
