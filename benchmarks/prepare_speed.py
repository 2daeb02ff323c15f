"""Throughput and peak memory of `python -m model.prepare` on a large generated corpus.

    python benchmarks/prepare_speed.py --size-mb 256

Writes a corpus of the given size (English-like ASCII words, or a mix with
accented letters and emoji with --unicode), runs `python -m model.prepare` on it
in a child process, and reports MB/s and the child's peak resident memory.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORDS = "the time traveller machine said we it was a of and to in that his hand ROMEO: ,.;!?\n"
UNICODE_WORDS = WORDS + " café naïve Ωmega 東京 🙂"
# A bare interpreter runs model.prepare and prints that child's peak RSS. (Measured
# from this process instead, the figure would include the memory this process had
# when it forked.)
PEAK_WRAPPER = ("import resource, subprocess, sys\n"
                "subprocess.run([sys.executable, '-m', 'model.prepare'] + sys.argv[1:], "
                "check=True)\n"
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")


def write_corpus(path: pathlib.Path, num_bytes: int, unicode: bool) -> int:
    """Write about `num_bytes` of words; return the exact size in bytes."""
    rng = np.random.default_rng(0)
    words = np.array((UNICODE_WORDS if unicode else WORDS).split(" "))
    with open(path, "w", encoding="utf-8") as sink:
        while sink.tell() < num_bytes:
            sink.write(" ".join(rng.choice(words, 200_000)))
    return path.stat().st_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=256, help="corpus size in MB (10^6 B)")
    parser.add_argument("--unicode", action="store_true",
                        help="include non-ASCII characters (the slower encoding path)")
    parser.add_argument("--preprocess", choices=("raw", "d2l"), default="raw",
                        help="preprocessing mode passed to model.prepare")
    parser.add_argument("--block-mb", type=float, default=1.0, help="model.prepare --block-mb")
    parser.add_argument("--out", default="benchmarks/results/prepare.json", help="JSON output")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        source = pathlib.Path(scratch) / "corpus.txt"
        size = write_corpus(source, int(args.size_mb * 1e6), args.unicode)
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-c", PEAK_WRAPPER, "--data", str(source), "--out",
             str(pathlib.Path(scratch) / "prepared"), "--preprocess", args.preprocess,
             "--block-mb", str(args.block_mb), "--no-progress"],
            cwd=ROOT, check=True, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        peak_mib = int(result.stdout.split()[-1]) / 1024  # ru_maxrss is in KiB on Linux
    row = {"corpus_mb": size / 1e6, "seconds": seconds, "mb_per_sec": size / 1e6 / seconds,
           "peak_rss_mib": peak_mib, "unicode": args.unicode, "preprocess": args.preprocess,
           "block_mb": args.block_mb}
    print(f"{row['corpus_mb']:.0f} MB in {seconds:.1f} s: {row['mb_per_sec']:.1f} MB/s, "
          f"peak resident memory {peak_mib:.0f} MiB")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
