"""Batch layouts for training and evaluation.

Every layout is returned as whole-epoch arrays (num_batches, B, T), so a train
loop can hand several batches to one jitted call instead of slicing in Python.
Shapes: B = batch_size, T = num_steps. Targets are the inputs shifted by one
character. A float mask marks real positions (1) and padding (0), so a partial
last batch keeps its data without changing any array shape.
"""

import dataclasses

import numpy as np

from model.data import CorpusError


@dataclasses.dataclass(frozen=True)
class Batches:
    """One epoch of batches."""

    inputs: np.ndarray  # int32 (num_batches, B, T)
    targets: np.ndarray  # int32 (num_batches, B, T)
    mask: np.ndarray  # float32 (num_batches, B, T)
    carry_over: bool  # True when batch i+1 continues batch i row by row (pass the carry)

    def __len__(self) -> int:
        return self.inputs.shape[0]


def _pack(windows: np.ndarray, batch_size: int, carry_over: bool) -> Batches:
    """Group (num_windows, T + 1) windows into batches, padding the last one with masked rows."""
    num_windows, width = windows.shape
    num_batches = -(-num_windows // batch_size)
    padded = np.zeros((num_batches * batch_size, width), np.int32)
    padded[:num_windows] = windows
    mask = np.zeros((num_batches * batch_size, width - 1), np.float32)
    mask[:num_windows] = 1.0
    shape = (num_batches, batch_size, width - 1)
    return Batches(inputs=padded[:, :-1].reshape(shape), targets=padded[:, 1:].reshape(shape),
                   mask=mask.reshape(shape), carry_over=carry_over)


def sequential_batches(ids: np.ndarray, batch_size: int, num_steps: int,
                       rng: np.random.Generator | None = None) -> Batches:
    """Partition the stream into B contiguous rows and walk along them T characters at a time.

    Row b of batch i+1 continues row b of batch i, so the carry can be passed from
    batch to batch (truncated backpropagation through time). A random offset in
    [0, T) per epoch varies where the windows are cut.
    """
    offset = int(rng.integers(num_steps)) if rng is not None else 0
    row_len = (len(ids) - offset - 1) // batch_size
    num_batches = row_len // num_steps
    if num_batches < 1:
        raise CorpusError(
            f"the training text ({len(ids)} characters) is too short for batch_size {batch_size} "
            f"x num_steps {num_steps}; lower --batch-size or --num-steps")
    used = num_batches * num_steps
    rows = np.stack([ids[offset + b * row_len: offset + b * row_len + used + 1]
                     for b in range(batch_size)])  # (B, used + 1)
    inputs = rows[:, :-1].reshape(batch_size, num_batches, num_steps).swapaxes(0, 1)
    targets = rows[:, 1:].reshape(batch_size, num_batches, num_steps).swapaxes(0, 1)
    return Batches(inputs=np.ascontiguousarray(inputs), targets=np.ascontiguousarray(targets),
                   mask=np.ones(inputs.shape, np.float32), carry_over=True)


def random_batches(ids: np.ndarray, batch_size: int, num_steps: int,
                   rng: np.random.Generator) -> Batches:
    """Cut the stream into non-overlapping windows from a random offset and shuffle them."""
    offset = int(rng.integers(num_steps))
    num_windows = (len(ids) - offset - 1) // num_steps
    if num_windows < 1:
        raise CorpusError(
            f"the training text ({len(ids)} characters) is shorter than num_steps {num_steps} + 1; "
            "lower --num-steps")
    starts = offset + num_steps * rng.permutation(num_windows)
    windows = ids[starts[:, None] + np.arange(num_steps + 1)]  # (num_windows, T + 1)
    return _pack(windows, batch_size, carry_over=False)


def overlapping_windows(ids: np.ndarray, num_steps: int, num_windows: int) -> np.ndarray:
    """Windows of T + 1 characters starting at 0..num_windows-1, as the book builds them."""
    return ids[np.arange(num_windows)[:, None] + np.arange(num_steps + 1)]  # (num_windows, T + 1)


def d2l_batches(ids: np.ndarray, batch_size: int, num_steps: int,
                rng: np.random.Generator | None) -> Batches:
    """Build the book's batches: every window start, shuffled if `rng` is given, the last batch partial."""
    num_windows = len(ids) - num_steps
    windows = overlapping_windows(ids, num_steps, num_windows)
    if rng is not None:
        windows = windows[rng.permutation(num_windows)]
    return _pack(windows, batch_size, carry_over=False)


def stream_windows(ids: np.ndarray, window: int) -> Batches:
    """Cut one continuous stream (batch 1) into windows of `window` characters, carry passed on."""
    if len(ids) < 2:
        raise CorpusError(f"cannot evaluate on {len(ids)} characters; at least 2 are needed")
    num_windows = -(-(len(ids) - 1) // window)
    inputs = np.zeros(num_windows * window, np.int32)
    targets = np.zeros(num_windows * window, np.int32)
    mask = np.zeros(num_windows * window, np.float32)
    inputs[:len(ids) - 1] = ids[:-1]
    targets[:len(ids) - 1] = ids[1:]
    mask[:len(ids) - 1] = 1.0
    shape = (num_windows, 1, window)
    return Batches(inputs=inputs.reshape(shape), targets=targets.reshape(shape),
                   mask=mask.reshape(shape), carry_over=True)


def epoch_batches(ids: np.ndarray, batching: str, split: str, batch_size: int, num_steps: int,
                  rng: np.random.Generator) -> Batches:
    """Build the training batches of one epoch for the configured layout."""
    if split == "d2l":
        return d2l_batches(ids, batch_size, num_steps, rng)
    if batching == "sequential":
        return sequential_batches(ids, batch_size, num_steps, rng)
    return random_batches(ids, batch_size, num_steps, rng)
