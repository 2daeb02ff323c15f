import numpy as np
import pytest

from model.batching import (d2l_batches, epoch_batches, random_batches, sequential_batches,
                            stream_windows)
from model.data import CorpusError

IDS = np.arange(1_000, dtype=np.int32)


def test_sequential_shapes_and_targets():
    batches = sequential_batches(IDS, batch_size=4, num_steps=10)
    assert batches.inputs.shape == batches.targets.shape == (len(batches), 4, 10)
    assert np.array_equal(batches.targets, batches.inputs + 1)
    assert batches.carry_over


def test_sequential_rows_continue_across_batches():
    batches = sequential_batches(IDS, batch_size=3, num_steps=5, rng=np.random.default_rng(1))
    for i in range(len(batches) - 1):
        # Row b of batch i+1 starts right after row b of batch i ends.
        assert np.array_equal(batches.inputs[i + 1, :, 0], batches.inputs[i, :, -1] + 1)


def test_random_batches_cover_disjoint_windows():
    batches = random_batches(IDS, batch_size=8, num_steps=10, rng=np.random.default_rng(0))
    real = batches.inputs[batches.mask[..., 0] > 0]  # (num_windows, T)
    starts = real[:, 0]
    assert len(set(starts.tolist())) == len(starts)
    assert np.all(np.diff(np.sort(starts)) >= 10)
    assert not batches.carry_over


def test_partial_last_batch_is_masked():
    batches = d2l_batches(np.arange(110, dtype=np.int32), batch_size=32, num_steps=10, rng=None)
    # 100 windows: three full batches and one with 4 real rows.
    assert len(batches) == 4
    assert batches.mask[:3].all()
    assert batches.mask[3].sum() == 4 * 10


def test_stream_windows_cover_every_prediction_once():
    batches = stream_windows(np.arange(600, dtype=np.int32), window=256)
    assert batches.inputs.shape == (3, 1, 256)
    assert batches.mask.sum() == 599
    flat = batches.inputs.reshape(-1)[:599]
    assert np.array_equal(flat, np.arange(599))


def test_batches_too_large_for_text_name_the_flags():
    with pytest.raises(CorpusError, match="--batch-size"):
        sequential_batches(np.arange(50, dtype=np.int32), batch_size=16, num_steps=10)
    with pytest.raises(CorpusError, match="--num-steps"):
        random_batches(np.arange(5, dtype=np.int32), 2, 10, np.random.default_rng(0))


def test_epoch_batches_are_reproducible():
    first = epoch_batches(IDS, "random", "full", 4, 10, np.random.default_rng([3, 1]))
    second = epoch_batches(IDS, "random", "full", 4, 10, np.random.default_rng([3, 1]))
    assert np.array_equal(first.inputs, second.inputs)
