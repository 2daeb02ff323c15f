"""Measure the app's start-up time, memory and per-request latency on this machine.

    python benchmarks/app_latency.py --requests 20 --out benchmarks/results/app_latency.json

Starts `python app.py` on a free loopback port with the shipped checkpoints,
times how long it takes until the page responds, then sends sequential
`generate` requests through gradio_client (greedy and sampled, 200 characters)
and reports the median and 95th-percentile latency and the server's resident
memory. Only 127.0.0.1 is contacted.
"""

import argparse
import json
import os
import pathlib
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def resident_mb(pid: int) -> float:
    """Return the resident set size of a process in MB, from /proc."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_until_serving(url: str, process: subprocess.Popen, timeout: float) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return time.perf_counter() - started
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"app.py did not respond at {url} within {timeout} s")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--requests", type=int, default=20, help="generate requests per setting")
    parser.add_argument("--num-chars", type=int, default=200, help="characters per request")
    parser.add_argument("--cell", default="lstm", help="checkpoint folder name to query")
    parser.add_argument("--out", default="benchmarks/results/app_latency.json",
                        help="JSON file for the results")
    args = parser.parse_args()

    from gradio_client import Client

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
               GRADIO_ANALYTICS_ENABLED="False")
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, str(ROOT / "app.py")], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        startup = wait_until_serving(url, process, timeout=120)
        client = Client(url, verbose=False, analytics_enabled=False)
        results = {"startup_seconds": startup,
                   "rss_mb_after_start": resident_mb(process.pid)}
        for name, temperature in (("greedy", 0.0), ("sampled", 0.8)):
            latencies = []
            for seed in range(args.requests):
                begin = time.perf_counter()
                client.predict(prefix="the time traveller", cell=args.cell,
                               num_chars=args.num_chars, temperature=temperature, top_k=0,
                               seed=seed, api_name="/generate")
                latencies.append(time.perf_counter() - begin)
            results[name] = {"p50_ms": 1000 * statistics.median(latencies),
                             "p95_ms": 1000 * percentile(latencies, 0.95),
                             "requests": len(latencies)}
        results["rss_mb_after_requests"] = resident_mb(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)
    results["machine"] = {"cpu": platform.processor() or platform.machine(),
                          "cores": os.cpu_count(), "python": platform.python_version()}
    results["settings"] = {"cell": args.cell, "num_chars": args.num_chars}
    print(f"start-up until the page responds: {results['startup_seconds']:.1f} s "
          f"(since process start {time.perf_counter() - started:.0f} s ago)")
    print(f"resident memory: {results['rss_mb_after_start']:.0f} MB after start, "
          f"{results['rss_mb_after_requests']:.0f} MB after the requests")
    print(f"{'request':10} {'p50 ms':>8} {'p95 ms':>8}")
    for name in ("greedy", "sampled"):
        print(f"{name:10} {results[name]['p50_ms']:8.0f} {results[name]['p95_ms']:8.0f}")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
