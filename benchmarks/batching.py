"""Compare sequential partitioning with random windows on the same model and budget.

    python benchmarks/batching.py --data ../shared/data/timemachine.txt --epochs 15

Trains the same LSTM twice, once with each batching mode (same seed, sizes,
optimizer and number of epochs), and prints the best validation perplexity
of each, read as one stream. This is the measurement behind the default
`--batching sequential`.
"""

import argparse
import dataclasses
import json
import logging
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import default_corpus  # noqa: E402

from model.config import ModelConfig, TrainConfig  # noqa: E402
from model.data import build_corpus, find_corpus, read_corpus  # noqa: E402
from model.train_lib import evaluate  # noqa: E402
from model.trainer import fit  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data",
                        help="corpus file; when omitted, ../shared/data/timemachine.txt if "
                             "present, else the cached or downloaded Time Machine")
    parser.add_argument("--epochs", type=int, default=15, help="epochs per run")
    parser.add_argument("--num-hiddens", type=int, default=256, help="LSTM hidden units")
    parser.add_argument("--out", default="benchmarks/results/batching.json", help="JSON output")
    args = parser.parse_args()
    args.data = default_corpus(parser, args.data)
    logging.basicConfig(level=logging.WARNING)

    base = TrainConfig(epochs=args.epochs, optimizer="adam", weight_decay=0.0, sample_every=0)
    text = read_corpus(find_corpus(args.data))
    results = {}
    for batching in ("sequential", "random"):
        train_config = dataclasses.replace(base, batching=batching)
        corpus = build_corpus(text, train_config.preprocess, "full", train_config.num_steps)
        model_config = ModelConfig(vocab_size=len(corpus.vocab), cell="lstm",
                                   num_hiddens=args.num_hiddens, dropout=0.3)
        started = time.perf_counter()
        result = fit(model_config, train_config, corpus, progress=False)
        test = evaluate(result.state.params, model_config, corpus.test, "full",
                        train_config.num_steps)
        results[batching] = {"best_val_perplexity": result.best_val_perplexity,
                             "final_test_perplexity": test.perplexity,
                             "seconds": time.perf_counter() - started}
    print(f"{'batching':12} {'best val ppl':>13} {'final test ppl':>15} {'seconds':>8}")
    for batching, row in results.items():
        print(f"{batching:12} {row['best_val_perplexity']:13.3f} "
              f"{row['final_test_perplexity']:15.3f} {row['seconds']:8.0f}")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
