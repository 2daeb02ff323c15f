"""Measure the app's start-up time, memory, request latency and first streamed character.

    python benchmarks/app_latency.py --requests 20 --browser 10

Starts `python app.py` on a free loopback port with the shipped checkpoints and
reports:

- start-up: seconds from starting the process until the page responds, and
  until the app logs that every model is warmed up (initialized and compiled);
- resident memory of the server after the warm-up and after the requests;
- latency of sequential `generate` API requests through gradio_client (greedy
  and sampled, 200 characters): median and 95th percentile;
- with --browser N: the milliseconds from a click on Generate in headless
  Chromium to the first generated character in the trained panel, N times.
  The page keeps its default settings (LSTM, 300 characters, reading pace)
  and times itself with `performance.now()` and a MutationObserver, so the
  figure includes HTTP, the queue, the stream and the page's rendering.

Only 127.0.0.1 is contacted; the browser aborts requests to any other address.
Needs the `chromium` system package and playwright for --browser.
"""

import argparse
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import ROOT, HelpFormatter, machine_info, write_json  # noqa: E402

WARMED_UP = "warmed up in"  # what app.py logs once every model is compiled
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

# Runs in the page: clicks Generate and resolves with the milliseconds until the
# trained panel contains a generated character (a span with a probability title).
FIRST_CHAR_JS = """
() => new Promise((resolve) => {
  const panel = document.querySelector('#trained-text');
  const started = performance.now();
  const observer = new MutationObserver(() => {
    if (panel.querySelector('span[title]')) {
      observer.disconnect();
      resolve(performance.now() - started);
    }
  });
  observer.observe(panel, {subtree: true, childList: true, characterData: true});
  document.querySelector('#generate').click();
})
"""


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


def wait_for(check, process: subprocess.Popen, timeout: float, event: str) -> float:
    """Poll `check()` until it is true; return the seconds since the process started."""
    while time.perf_counter() - process.started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with code {process.returncode}")
        if check():
            return time.perf_counter() - process.started
        time.sleep(0.05)
    raise TimeoutError(f"app.py did not {event} within {timeout} s")


def responds(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def summary_ms(seconds: list[float]) -> dict:
    return {"p50_ms": 1000 * statistics.median(seconds),
            "p95_ms": 1000 * percentile(seconds, 0.95), "requests": len(seconds)}


def api_latency(url: str, cell: str, num_chars: int, requests: int) -> dict:
    from gradio_client import Client

    client = Client(url, verbose=False, analytics_enabled=False)
    results = {}
    for name, temperature in (("greedy", 0.0), ("sampled", 0.8)):
        latencies = []
        for seed in range(requests):
            begin = time.perf_counter()
            client.predict(prefix="the time traveller", cell=cell, num_chars=num_chars,
                           temperature=temperature, top_k=0, seed=seed, api_name="/generate")
            latencies.append(time.perf_counter() - begin)
        results[name] = summary_ms(latencies)
    return results


def browser_first_char(url: str, trials: int) -> dict:
    """Click Generate `trials` times on fresh pages; time each to the first generated character."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    times_ms = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(url)
                   else route.abort())
        for _ in range(trials):
            page.goto(url)
            page.locator("#generate").wait_for(timeout=30_000)
            times_ms.append(page.evaluate(FIRST_CHAR_JS))
        browser.close()
    return {"p50_ms": statistics.median(times_ms), "max_ms": max(times_ms),
            "min_ms": min(times_ms), "trials": len(times_ms)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--requests", type=int, default=20,
                        help="API requests per setting (greedy, sampled)")
    parser.add_argument("--num-chars", type=int, default=200,
                        help="characters per API request")
    parser.add_argument("--cell", default="lstm", help="checkpoint folder name to query")
    parser.add_argument("--browser", type=int, default=0, metavar="N",
                        help="first-character trials in headless Chromium (0: none)")
    parser.add_argument("--out", default="benchmarks/results/app_latency.json",
                        help="JSON file for the results")
    args = parser.parse_args()
    if args.browser:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            parser.error("--browser needs playwright; run this with the project's .venv "
                         "(pip install -r requirements-dev.txt), or leave out --browser")
        if not (shutil.which("chromium") or pathlib.Path("/usr/bin/chromium").exists()):
            parser.error("--browser needs chromium: apt-get install -y chromium")

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
               GRADIO_ANALYTICS_ENABLED="False")
    with tempfile.NamedTemporaryFile("w+", suffix=".log") as log:
        process = subprocess.Popen([sys.executable, str(ROOT / "app.py")], env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
        process.started = time.perf_counter()
        try:
            results = {"startup_seconds": wait_for(lambda: responds(url), process, 120,
                                                   "respond")}
            results["warm_seconds"] = wait_for(
                lambda: WARMED_UP in pathlib.Path(log.name).read_text(), process, 300,
                "finish warming up")
            results["rss_mb_after_warm_up"] = resident_mb(process.pid)
            results.update(api_latency(url, args.cell, args.num_chars, args.requests))
            if args.browser:
                results["browser_first_char"] = browser_first_char(url, args.browser)
            results["rss_mb_after_requests"] = resident_mb(process.pid)
        finally:
            process.terminate()
            process.wait(timeout=30)

    print(f"page responds {results['startup_seconds']:.1f} s after the process starts; every "
          f"model warmed up after {results['warm_seconds']:.1f} s")
    print(f"resident memory: {results['rss_mb_after_warm_up']:.0f} MB after the warm-up, "
          f"{results['rss_mb_after_requests']:.0f} MB after the requests")
    print(f"{'API request':12} {'p50 ms':>8} {'p95 ms':>8}")
    for name in ("greedy", "sampled"):
        print(f"{name:12} {results[name]['p50_ms']:8.0f} {results[name]['p95_ms']:8.0f}")
    if args.browser:
        row = results["browser_first_char"]
        print(f"browser, click to first generated character: median {row['p50_ms']:.0f} ms "
              f"(min {row['min_ms']:.0f}, max {row['max_ms']:.0f}, {row['trials']} trials)")
    write_json(args.out, {"machine": machine_info(), "settings": vars(args), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
