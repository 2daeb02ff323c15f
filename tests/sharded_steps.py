"""Run by tests/test_parallel.py in a subprocess that sees 4 forced CPU devices.

Trains the same tiny model for one short epoch on 1 device and on 4, and prints
JSON with the largest parameter difference, the validation perplexities, and
how a batch placed by `DataParallel.put_batch` is laid out over the devices.
"""

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from model.batching import sequential_batches  # noqa: E402
from model.config import ModelConfig, TrainConfig  # noqa: E402
from model.data import build_corpus  # noqa: E402
from model.parallel import make_data_parallel  # noqa: E402
from model.trainer import fit  # noqa: E402


def main() -> None:
    text = pathlib.Path(sys.argv[1]).read_text(encoding="utf-8")
    corpus = build_corpus(text, "d2l", "full", 16)
    corpus = corpus.__class__(vocab=corpus.vocab, train=corpus.train[:4_000],
                              val=corpus.val[:600], test=corpus.test, split="full")
    model_config = ModelConfig(vocab_size=len(corpus.vocab), cell="lstm", num_hiddens=32,
                               num_layers=2, dropout=0.1, recurrent_dropout=0.1)
    train_config = TrainConfig(batch_size=8, num_steps=16, epochs=1, steps_per_call=4,
                               sample_every=0)
    results = {devices: fit(model_config, train_config, corpus, progress=False,
                            devices=devices) for devices in (1, 4)}
    leaves = [jax.tree_util.tree_leaves(results[devices].state.params) for devices in (1, 4)]
    max_diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                   for a, b in zip(*leaves))
    largest = max(float(np.max(np.abs(np.asarray(a)))) for a in leaves[0])

    parallel = make_data_parallel(4, train_config.batch_size)
    inputs, _, _ = sequential_batches(corpus.train, 8, 16).take(0, 2)  # (2, 8, 16)
    placed = parallel.put_batch(inputs, 8)
    shards = sorted(placed.addressable_shards, key=lambda shard: shard.device.id)
    print(json.dumps({
        "num_devices": len(jax.devices()),
        "max_param_diff": max_diff,
        "largest_param": largest,
        "steps": [int(np.asarray(results[devices].state.step)) for devices in (1, 4)],
        "val_perplexity": [results[devices].history[-1]["val_perplexity"]
                           for devices in (1, 4)],
        "shard_devices": [shard.device.id for shard in shards],
        "shard_shapes": [list(shard.data.shape) for shard in shards],
        "shard_rows_match": all(
            np.array_equal(np.asarray(shard.data), inputs[shard.index]) for shard in shards),
        "param_devices": len(results[4].state.params["head"]["kernel"].sharding.device_set),
    }))


if __name__ == "__main__":
    main()
