"""Helpers shared by the speed benchmarks: machine description, matmul peak, corpus, JSON output."""

import argparse
import importlib.metadata
import json
import os
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_TIME_MACHINE = ROOT.parent / "shared" / "data" / "timemachine.txt"


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or the platform's processor string."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Return the number of cores this process may run on (what `taskset` allows)."""
    return len(os.sched_getaffinity(0))


def machine_info() -> dict:
    versions = {}
    for package in ("jax", "jaxlib", "flax", "optax", "numpy", "torch"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu": cpu_model(), "cores_total": os.cpu_count(), "cores_used": usable_cores(),
            "affinity": sorted(os.sched_getaffinity(0)), "python": platform.python_version(),
            "versions": versions, "argv": sys.argv}


def best_time(function, repeats: int) -> float:
    """Return the fastest of `repeats` timed calls of `function()` (which must block), in seconds."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def matmul_peak(sizes=(256, 512, 1024, 2048), repeats: int = 5) -> float:
    """Measure fp32 matrix-product throughput in FLOP/s: the best over square sizes n.

    For each n, one jitted call chains (2048 / n)^3 / 8 products (at least one) of
    (n, n) @ (n, n), 2 n^3 FLOPs each, so small sizes are not timed as call overhead.
    Small products whose operands fit the L2 cache can run faster than large ones,
    so several sizes are tried and the fastest counts.
    """
    best = 0.0
    for size in sizes:
        keys = jax.random.split(jax.random.PRNGKey(size))
        a = jax.random.normal(keys[0], (size, size), jnp.float32)
        b = jax.random.normal(keys[1], (size, size), jnp.float32) / np.sqrt(size)
        count = max(1, (2048 // size) ** 3 // 8)

        @jax.jit
        def chain(a, b):
            return jax.lax.fori_loop(0, count, lambda _, c: c @ b, a)

        chain(a, b).block_until_ready()
        seconds = best_time(lambda: chain(a, b).block_until_ready(), repeats)
        best = max(best, count * 2 * size ** 3 / seconds)
    return best


def default_corpus(parser: argparse.ArgumentParser, path: str | None) -> str | None:
    """Return the corpus file to train on: `path`, else the shared Time Machine when present.

    None leaves the choice to `model.data.find_corpus` (its cache, else a download).
    A `path` that is not a file ends the program with a usage error.
    """
    if path:
        if not pathlib.Path(path).is_file():
            parser.error(f"--data {path}: file not found")
        return path
    return str(SHARED_TIME_MACHINE) if SHARED_TIME_MACHINE.is_file() else None


def benchmark_text(path: str | None) -> tuple[str, str]:
    """Return (text, where it came from): `path`, the shared Time Machine, or a generated text.

    Speed depends on the sizes, not on the words, so the generated fallback (letters
    and spaces in the Time Machine's proportions of length) serves as well.
    """
    if path:
        return pathlib.Path(path).read_text(encoding="utf-8"), path
    if SHARED_TIME_MACHINE.is_file():
        return SHARED_TIME_MACHINE.read_text(encoding="utf-8"), str(SHARED_TIME_MACHINE)
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz "))
    return "".join(rng.choice(letters, 180_000)), "generated (180,000 random letters and spaces)"


def write_json(path: str, payload: dict) -> None:
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                    argparse.RawDescriptionHelpFormatter):
    """Show defaults in --help and the module docstring (units, what is measured) as written."""
