"""Batch layouts for training and evaluation.

Every layout is a sequence of batches read in chunks: `take(begin, end)` returns
the arrays (K, B, T) of batches begin..end-1, so a train loop hands several
batches to one jitted call instead of slicing in Python. Shapes: K = batches in
the chunk, B = batch_size, T = num_steps. Targets are the inputs shifted by one
character. A float mask marks real positions (1) and padding (0), so a partial
last batch keeps its data without changing any array shape.

The training layouts (`sequential`, `random`) keep only the id stream and the
window start positions, and gather each chunk's windows when it is taken. The
id stream may be a memory-mapped file (see `model/prepare.py`), so an epoch over
a corpus larger than memory reads only the windows of the current chunk.
`rows` selects the sequences of each batch that one process reads when several
processes share a batch (multi-host data parallelism).
"""

import dataclasses

import numpy as np

from model.data import CorpusError

ALL_ROWS = slice(None)


@dataclasses.dataclass(frozen=True)
class Batches:
    """Batches held as whole arrays (evaluation streams and the book's small layout)."""

    inputs: np.ndarray  # int32 (num_batches, B, T)
    targets: np.ndarray  # int32 (num_batches, B, T)
    mask: np.ndarray  # float32 (num_batches, B, T)
    carry_over: bool  # True when batch i+1 continues batch i row by row (pass the carry)

    def __len__(self) -> int:
        return self.inputs.shape[0]

    @property
    def batch_size(self) -> int:
        return self.inputs.shape[1]

    def take(self, begin: int, end: int, rows: slice = ALL_ROWS) -> tuple[np.ndarray, ...]:
        """Return (inputs, targets, mask), each (end - begin, rows of B, T)."""
        return (self.inputs[begin:end, rows], self.targets[begin:end, rows],
                self.mask[begin:end, rows])


class _Gathered:
    """Shared by the lazy layouts: whole-epoch views built from `take`, for tests and small data."""

    def __len__(self) -> int:
        return self.num_batches

    @property
    def inputs(self) -> np.ndarray:
        return self.take(0, len(self))[0]

    @property
    def targets(self) -> np.ndarray:
        return self.take(0, len(self))[1]

    @property
    def mask(self) -> np.ndarray:
        return self.take(0, len(self))[2]


@dataclasses.dataclass(frozen=True)
class SequentialBatches(_Gathered):
    """B contiguous rows of the stream, walked T characters at a time (batch i+1 continues batch i)."""

    ids: np.ndarray  # (N,) the id stream, possibly memory-mapped
    batch_size: int
    num_steps: int
    offset: int  # where the first row starts
    row_len: int  # characters per row
    num_batches: int
    carry_over: bool = True

    def take(self, begin: int, end: int, rows: slice = ALL_ROWS) -> tuple[np.ndarray, ...]:
        end = min(end, self.num_batches)
        row_starts = self.offset + self.row_len * np.arange(self.batch_size)[rows]  # (B,)
        batch_starts = self.num_steps * np.arange(begin, end)  # (K,)
        starts = batch_starts[:, None] + row_starts[None, :]  # (K, B)
        windows = np.asarray(self.ids[starts[..., None] + np.arange(self.num_steps + 1)],
                             np.int32)  # (K, B, T + 1)
        return windows[..., :-1], windows[..., 1:], np.ones(windows[..., 1:].shape, np.float32)


@dataclasses.dataclass(frozen=True)
class WindowBatches(_Gathered):
    """Windows of T + 1 characters at the given starts, B per batch, the last batch padded."""

    ids: np.ndarray  # (N,) the id stream, possibly memory-mapped
    starts: np.ndarray  # int64 (num_windows,) window start positions, in batch order
    batch_size: int
    num_steps: int
    carry_over: bool = False

    @property
    def num_batches(self) -> int:
        return -(-len(self.starts) // self.batch_size)

    def take(self, begin: int, end: int, rows: slice = ALL_ROWS) -> tuple[np.ndarray, ...]:
        end = min(end, self.num_batches)
        slots = (np.arange(begin, end)[:, None] * self.batch_size
                 + np.arange(self.batch_size)[None, rows])  # (K, B) window numbers
        real = slots < len(self.starts)  # (K, B); False marks padding rows of the last batch
        starts = self.starts[np.where(real, slots, 0)]  # (K, B)
        windows = np.asarray(self.ids[starts[..., None] + np.arange(self.num_steps + 1)],
                             np.int32)  # (K, B, T + 1)
        windows = np.where(real[..., None], windows, 0)
        mask = np.broadcast_to(real[..., None], windows[..., 1:].shape).astype(np.float32)
        return windows[..., :-1], windows[..., 1:], mask


def sequential_batches(ids: np.ndarray, batch_size: int, num_steps: int,
                       rng: np.random.Generator | None = None) -> SequentialBatches:
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
    return SequentialBatches(ids=ids, batch_size=batch_size, num_steps=num_steps,
                             offset=offset, row_len=row_len, num_batches=num_batches)


def random_batches(ids: np.ndarray, batch_size: int, num_steps: int,
                   rng: np.random.Generator) -> WindowBatches:
    """Cut the stream into non-overlapping windows from a random offset and shuffle them."""
    offset = int(rng.integers(num_steps))
    num_windows = (len(ids) - offset - 1) // num_steps
    if num_windows < 1:
        raise CorpusError(
            f"the training text ({len(ids)} characters) is shorter than num_steps {num_steps} + 1; "
            "lower --num-steps")
    starts = offset + num_steps * rng.permutation(num_windows)
    return WindowBatches(ids=ids, starts=starts, batch_size=batch_size, num_steps=num_steps)


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
                  rng: np.random.Generator) -> Batches | SequentialBatches | WindowBatches:
    """Build the training batches of one epoch for the configured layout."""
    if split == "d2l":
        return d2l_batches(ids, batch_size, num_steps, rng)
    if batching == "sequential":
        return sequential_batches(ids, batch_size, num_steps, rng)
    return random_batches(ids, batch_size, num_steps, rng)
