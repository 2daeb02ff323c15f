"""Training throughput against the number of devices each batch is split over.

    python benchmarks/devices.py --devices 1 2 4

Each device count runs in its own process. On a CPU machine the devices are
forced host devices (XLA_FLAGS=--xla_force_host_platform_device_count=N): they
share the same cores, so this measures the cost of the sharded step, not a
speed-up. On a machine with N accelerators the same command uses real devices.
Characters/s are from the second epoch, after compilation.
"""

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import default_corpus  # noqa: E402


def worker(args) -> dict:
    """Train the configured LSTM for 2 epochs on `args.worker` devices; return the figures."""
    import jax

    from model.config import ModelConfig, TrainConfig
    from model.data import build_corpus, find_corpus, read_corpus
    from model.trainer import fit

    train_config = TrainConfig(batch_size=args.batch_size, num_steps=args.num_steps, epochs=2,
                               sample_every=0)
    corpus = build_corpus(read_corpus(find_corpus(args.data)), "d2l", "full", args.num_steps)
    model_config = ModelConfig(vocab_size=len(corpus.vocab), cell="lstm",
                               num_hiddens=args.num_hiddens, num_layers=args.num_layers)
    result = fit(model_config, train_config, corpus, progress=False, devices=args.worker)
    first, second = result.history
    return {"devices": args.worker, "platform": jax.devices()[0].platform,
            "chars_per_sec": second["chars_per_sec"],
            "first_epoch_seconds": first["wall_time"],
            "second_epoch_seconds": second["wall_time"] - first["wall_time"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4],
                        help="device counts to measure")
    parser.add_argument("--data",
                        help="corpus file; when omitted, ../shared/data/timemachine.txt if "
                             "present, else the cached or downloaded Time Machine")
    parser.add_argument("--num-hiddens", type=int, default=256, help="LSTM hidden units")
    parser.add_argument("--num-layers", type=int, default=2, help="LSTM layers")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="sequences per step; a multiple of every device count")
    parser.add_argument("--num-steps", type=int, default=128, help="characters per sequence")
    parser.add_argument("--out", default="benchmarks/results/devices.json", help="JSON output")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.data = default_corpus(parser, args.data)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    rows = []
    for count in args.devices:
        env = dict(os.environ)
        if not os.environ.get("JAX_PLATFORMS") or os.environ["JAX_PLATFORMS"] == "cpu":
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                                f" --xla_force_host_platform_device_count={count}").strip()
        command = [sys.executable, __file__, "--worker", str(count),
                   "--num-hiddens", str(args.num_hiddens), "--num-layers", str(args.num_layers),
                   "--batch-size", str(args.batch_size), "--num-steps", str(args.num_steps)]
        if args.data:
            command += ["--data", args.data]
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            print(result.stderr[-2000:], file=sys.stderr)
            return 1
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(f"{count} device(s): {rows[-1]['chars_per_sec']:,.0f} characters/s", flush=True)

    print(f"\n{'devices':>7} {'platform':>8} {'characters/s':>13} {'epoch 2 (s)':>12}")
    for row in rows:
        print(f"{row['devices']:7d} {row['platform']:>8} {row['chars_per_sec']:13,.0f} "
              f"{row['second_epoch_seconds']:12.1f}")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "machine": platform.processor() or
                               platform.machine(), "cpu_count": os.cpu_count(),
                               "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
