"""Load-test the app on 127.0.0.1: concurrent API users, cancelled requests and stopped streams.

    python benchmarks/load_test.py --out benchmarks/results/load_test.json
    python benchmarks/load_test.py --url http://127.0.0.1:7860/ --pid 1234 --server-log app.log

Starts `python app.py` on a free loopback port (or uses one already running on
127.0.0.1 given by --url), then runs, all at the same time:

- `--users` gradio_client users, each sending `--requests-per-user` `generate`
  requests of `--num-chars` characters, one after another (sampled, temperature 0.8);
- `--cancel-users` gradio_client users who submit a `generate` request and call
  `job.cancel()` after a random delay;
- `--stream-users` headless Chromium pages that click Generate, wait for the
  streamed text, and click Stop. The page's streaming event is private to the
  page, so gradio_client cannot call it;
- a greedy request (temperature 0, seed 0), repeated `--probes` times, whose
  text must equal the text the same request returned before the load.

After that load, a burst of `--burst` requests is submitted at once to fill the
queue. Every request must complete or be rejected with gradio's "Queue is full"
message, and only the requests this script cancels may end cancelled. The server
log must contain no ERROR or Traceback line, and the server's resident memory
(VmRSS in /proc/PID/status) must grow by at most --max-rss-growth-mb. The script
prints a table, writes the report as JSON, and exits with 1 if a check fails.

Only 127.0.0.1 is contacted. The browser pages abort every request to any other
address.
"""

import argparse
import concurrent.futures
import dataclasses
import json
import os
import pathlib
import platform
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from importlib import metadata

import httpx

# gradio_client sends usage statistics unless both of these are set.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
# Requests go straight to 127.0.0.1, never through a proxy named in the environment.
for _name in ("NO_PROXY", "no_proxy"):
    os.environ[_name] = ",".join(filter(None, [os.environ.get(_name), "127.0.0.1"]))

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.app_latency import free_port, percentile, resident_mb  # noqa: E402

PREFIX = "the time traveller"
# gradio_client 2.7 raises QueueError("Queue is full! Please try again.") when the server
# responds with status 503 because its queue is full.
BUSY_MESSAGE = "Queue is full"
LOG_PROBLEMS = ("ERROR", "Traceback")
GREEDY_MISMATCH = "greedy text differs from the text alone"
STATUS_POLL_SECONDS = 0.05  # how often a user thread reads its job's status
MEMORY_POLL_SECONDS = 0.2
STREAM_CHARS = 300  # the page's default length, revealed at its default 30 characters a second
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

# Request outcomes. Errors and time-outs fail the load test, and so does a cancelled
# request that the script did not cancel.
COMPLETED, REJECTED, CANCELLED = "completed", "rejected (queue full)", "cancelled"
ERROR, TIMED_OUT = "error", "timed out"
CANCELLING_KINDS = ("cancel", "stream")


@dataclasses.dataclass
class LoadSettings:
    """What the load consists of. Counts are requests or users; times are seconds."""

    users: int = 32
    requests_per_user: int = 3
    num_chars: int = 500
    cell: str = "lstm"
    cancel_users: int = 4
    stream_users: int = 2
    stream_cycles: int = 3  # Generate-then-Stop cycles per browser page
    probes: int = 3
    burst: int = 96
    timeout: float = 300.0  # for the whole load, from the first request to the last
    # NOTE: a chosen bound, not a derived one. The default load grew the server by
    # 7 to 30 MB with the shipped checkpoints.
    max_rss_growth_mb: float = 256.0
    seed: int = 0


@dataclasses.dataclass
class RequestRecord:
    """One request's outcome and timings, in seconds since the load started."""

    kind: str  # "generate", "probe", "cancel", "burst" or "stream"
    outcome: str
    submitted: float
    started: float | None = None  # first time the job was seen processing (or text was shown)
    finished: float | None = None
    message: str = ""


def is_acceptable(record: RequestRecord) -> bool:
    if record.outcome == CANCELLED:
        return record.kind in CANCELLING_KINDS
    return record.outcome in (COMPLETED, REJECTED)


# ---------------------------------------------------------------------------- server


def check_loopback_url(url: str) -> str:
    """Return `url` with a trailing slash if its host is 127.0.0.1, else raise ValueError."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "http" or parsed.hostname != "127.0.0.1":
        raise ValueError(f"--url must be an http:// address on 127.0.0.1, got {url!r}. "
                         "This script only loads servers on this machine's loopback address")
    return url if url.endswith("/") else url + "/"


def start_server(log_path: pathlib.Path, checkpoint_root: str | None,
                 startup_timeout: float) -> tuple[subprocess.Popen, str]:
    """Start `python app.py` on a free loopback port with its output in `log_path`."""
    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
               PYTHONUNBUFFERED="1")
    command = [sys.executable, str(ROOT / "app.py")]
    if checkpoint_root:
        command += ["--checkpoint-root", checkpoint_root]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with code {process.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return process, url
        except OSError:
            time.sleep(0.25)
    process.kill()
    raise TimeoutError(f"app.py did not respond at {url} within {startup_timeout:.0f} s; "
                       f"see {log_path}")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def log_problems(log_text: str) -> list[str]:
    """Return the server log lines that report an error or a traceback."""
    return [line for line in log_text.splitlines() if any(word in line for word in LOG_PROBLEMS)]


class MemorySampler:
    """Sample a process's resident memory (MB) in a background thread until `stop()`."""

    def __init__(self, pid: int):
        self.pid = pid
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(resident_mb(self.pid))
            except OSError:  # the process has exited
                return
            self._stop.wait(MEMORY_POLL_SECONDS)

    def start(self) -> "MemorySampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------------- API users


class Clock:
    """Seconds since the load started, and the monotonic time by which it must end."""

    def __init__(self):
        self.start(float("inf"))

    def start(self, timeout: float) -> None:
        self.origin = time.monotonic()
        self.deadline = self.origin + timeout

    def __call__(self) -> float:
        return time.monotonic() - self.origin

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


def make_client(url: str):
    from gradio_client import Client
    return Client(url, verbose=False, analytics_enabled=False)


def classify_error(error: BaseException) -> tuple[str, str]:
    """Map a request's exception to (outcome, message).

    httpx time-outs are gradio_client giving up on an HTTP call (5 s by default)
    while the server is too slow to respond.
    """
    message = f"{type(error).__name__}: {error}"
    if isinstance(error, concurrent.futures.CancelledError):
        return CANCELLED, message
    if isinstance(error, (concurrent.futures.TimeoutError, httpx.TimeoutException)):
        return TIMED_OUT, message
    if BUSY_MESSAGE.lower() in str(error).lower():
        return REJECTED, message
    return ERROR, message


def generate_settings(settings: LoadSettings, temperature: float, seed: int) -> dict:
    return dict(prefix=PREFIX, cell=settings.cell, num_chars=settings.num_chars,
                temperature=temperature, top_k=0, seed=seed)


def submit(client, request: dict, record: RequestRecord, clock: Clock):
    """Submit a generate request; return its job, or None after recording why it failed."""
    try:
        return client.submit(**request, api_name="/generate")
    except Exception as error:  # noqa: BLE001  (every failure is counted, not raised)
        record.outcome, record.message = classify_error(error)
        record.finished = clock()
        return None


def wait_for_job(job, record: RequestRecord, clock: Clock):
    """Wait for a submitted job until the deadline, filling in `record`; return its result."""
    from gradio_client.utils import Status
    while not job.done() and clock.left() > 0:
        if record.started is None and job.status().code in (Status.PROCESSING,
                                                            Status.ITERATING):
            record.started = clock()
        time.sleep(STATUS_POLL_SECONDS)
    try:
        result = job.result(timeout=clock.left())
    except BaseException as error:  # noqa: BLE001  (every failure is counted, not raised)
        record.outcome, record.message = classify_error(error)
        record.finished = clock()
        return None
    record.outcome, record.finished = COMPLETED, clock()
    return result


def run_request(client, kind: str, request: dict, clock: Clock
                ) -> tuple[RequestRecord, tuple | None]:
    record = RequestRecord(kind=kind, outcome=ERROR, submitted=clock())
    job = submit(client, request, record, clock)
    if job is None:
        return record, None
    return record, wait_for_job(job, record, clock)


def run_user(client, user: int, settings: LoadSettings, clock: Clock) -> list[RequestRecord]:
    """Send one user's requests one after another; each has its own seed."""
    records = []
    for index in range(settings.requests_per_user):
        seed = settings.seed + user * settings.requests_per_user + index
        record, result = run_request(client, "generate", generate_settings(settings, 0.8, seed),
                                     clock)
        if result is not None and not result[1].startswith(PREFIX):
            record.outcome, record.message = ERROR, f"unexpected text {result[1][:60]!r}"
        records.append(record)
    return records


def run_cancel_user(client, user: int, settings: LoadSettings, clock: Clock) -> RequestRecord:
    """Submit a request and cancel it after 0 to 0.5 s (random, seeded per user)."""
    delay = random.Random(settings.seed + 1000 + user).uniform(0.0, 0.5)
    record = RequestRecord(kind="cancel", outcome=ERROR, submitted=clock())
    job = submit(client, generate_settings(settings, 0.8, settings.seed + 1000 + user), record,
                 clock)
    if job is None:
        return record
    time.sleep(delay)
    try:
        job.cancel()
    except Exception as error:  # noqa: BLE001  (an HTTP failure of the cancel request)
        outcome, message = classify_error(error)
        record.outcome = TIMED_OUT if outcome == TIMED_OUT else ERROR
        record.message, record.finished = f"job.cancel() failed: {message}", clock()
        return record
    wait_for_job(job, record, clock)
    if record.outcome == ERROR:
        # NOTE: once cancel() has gone through, gradio_client reports some cancelled jobs
        # as a plain error rather than CancelledError (seen in about 1 of 3 CI-scale runs).
        # Server-side failures are still caught by the server-log check.
        record.outcome, record.message = CANCELLED, f"after job.cancel(): {record.message}"
    return record


def run_probes(client, settings: LoadSettings, expected: tuple, clock: Clock
               ) -> list[RequestRecord]:
    """Send the greedy request `settings.probes` times during the load; compare the text."""
    records = []
    for _ in range(settings.probes):
        time.sleep(0.5)  # so that each probe joins a queue of the users' requests
        record, result = run_request(client, "probe", generate_settings(settings, 0.0, 0), clock)
        if result is not None and tuple(result) != expected:
            record.outcome, record.message = ERROR, GREEDY_MISMATCH
        records.append(record)
    return records


def run_burst(clients, settings: LoadSettings, clock: Clock) -> list[RequestRecord]:
    """Submit `settings.burst` requests at once, spread over the clients, then wait for all."""
    submitted = []
    for index in range(settings.burst):
        client = clients[index % len(clients)]
        record = RequestRecord(kind="burst", outcome=ERROR, submitted=clock())
        job = submit(client, generate_settings(settings, 0.8, settings.seed + 5000 + index),
                     record, clock)
        submitted.append((job, record))
    waiting = [(job, record) for job, record in submitted if job is not None]
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(waiting) or 1) as pool:
        list(pool.map(lambda pair: wait_for_job(*pair, clock), waiting))
    return [record for _, record in submitted]


# ---------------------------------------------------------------------------- browser streams


def chromium_path() -> str | None:
    """Return the system Chromium if it and the playwright package are installed."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return None
    return shutil.which("chromium")


def run_stream_users(url: str, settings: LoadSettings, clock: Clock, pages_ready: threading.Event,
                     load_started: threading.Event) -> list[RequestRecord]:
    """Open `settings.stream_users` pages; each clicks Generate, waits for text, clicks Stop.

    Sets `pages_ready` once every page has loaded, then waits for `load_started`.
    Playwright's sync API is used from this one thread only.
    """
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    def only_loopback(route):
        if route.request.url.startswith(url):
            route.continue_()
        else:
            route.abort()

    records = []
    rng = random.Random(settings.seed + 2000)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            pages = []
            for _ in range(settings.stream_users):
                page = browser.new_page()
                page.route("**/*", only_loopback)
                page.goto(url)
                page.locator("#generate").wait_for(timeout=60_000)
                pages.append(page)
            pages_ready.set()
            load_started.wait()
            for _ in range(settings.stream_cycles):
                try:
                    records += stream_cycle(pages, rng, clock)
                except PlaywrightError as error:  # a page stopped responding, or timed out
                    records.append(RequestRecord(kind="stream", outcome=ERROR, submitted=clock(),
                                                 message=f"browser: {error}"))
                    break
        finally:
            browser.close()
    return records


def shown_chars(page) -> int:
    """Return how many generated characters the page's trained panel shows."""
    return page.locator("#trained-text span[title]").count()


def stream_cycle(pages, rng: random.Random, clock: Clock) -> list[RequestRecord]:
    """Click Generate on every page, wait until each shows new text, then click Stop on each.

    A stream counts as cancelled when its text stops growing after Stop, and as
    completed when all STREAM_CHARS characters were shown before Stop was clicked.
    """
    # force=True clicks at once, as a person does, without Playwright's default wait
    # for the button to be visible, enabled and stable.
    cycle = []
    for page in pages:
        cycle.append((page, shown_chars(page), RequestRecord(kind="stream", outcome=ERROR,
                                                             submitted=clock())))
        page.locator("#generate").click(force=True)
    waiting = list(cycle)
    while waiting and clock.left() > 0:
        for item in list(waiting):
            page, before, record = item
            count = shown_chars(page)
            # A new stream first empties the panel, so any other non-zero count is new text.
            if count and count != before:
                record.started = clock()
                waiting.remove(item)
        time.sleep(STATUS_POLL_SECONDS)
    for _, _, record in waiting:
        record.outcome, record.message = TIMED_OUT, "no streamed text appeared"

    time.sleep(rng.uniform(0.2, 1.0))
    started = [(page, record) for page, _, record in cycle if record.started is not None]
    at_stop = []
    for page, record in started:
        page.locator("#stop").click(force=True)
        record.finished = clock()
        at_stop.append(shown_chars(page))
    time.sleep(0.5)  # updates already sent before Stop may still arrive
    stopped = [shown_chars(page) for page, _ in started]
    time.sleep(1.0)
    for (page, record), first, count in zip(started, at_stop, stopped):
        if first >= STREAM_CHARS:
            record.outcome, record.message = COMPLETED, "the whole text was shown before Stop"
        elif shown_chars(page) == count:
            record.outcome = CANCELLED
        else:
            record.message = f"text kept growing after Stop ({count} characters shown)"
    return [record for _, _, record in cycle]


# ---------------------------------------------------------------------------- the load


def run_load(url: str, settings: LoadSettings, pid: int | None = None) -> dict:
    """Run the concurrent load, then the burst, against the app at `url`; return the report.

    `pid` is the server's process id, for memory sampling; without it memory is
    not measured.
    """
    url = check_loopback_url(url)
    if settings.stream_users and not chromium_path():
        raise RuntimeError("--stream-users needs the playwright package and Debian's chromium "
                           "(apt-get install chromium); pass --stream-users 0 to run without")
    clients = [make_client(url) for _ in range(settings.users + settings.cancel_users + 1)]
    try:
        return run_with_clients(url, settings, pid, clients)
    finally:
        for client in clients:
            client.close()


def run_with_clients(url: str, settings: LoadSettings, pid: int | None, clients) -> dict:
    user_clients = clients[:settings.users]
    cancel_clients = clients[settings.users:-1]
    probe_client = clients[-1]
    # The greedy text alone, with no other request running.
    expected = tuple(probe_client.predict(**generate_settings(settings, 0.0, 0),
                                          api_name="/generate"))
    rss_before = resident_mb(pid) if pid else None
    sampler = MemorySampler(pid).start() if pid else None
    load_average_before = os.getloadavg()  # 1, 5 and 15 minute averages, from the kernel

    clock = Clock()
    pages_ready, load_started = threading.Event(), threading.Event()
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(clients) + 1) as pool:
        streams = None
        if settings.stream_users:
            streams = pool.submit(run_stream_users, url, settings, clock, pages_ready,
                                  load_started)
            while not pages_ready.wait(0.5):
                if streams.done():
                    streams.result()  # raises the browser's error
                    raise RuntimeError("the browser pages closed before the load started")
        clock.start(settings.timeout)
        load_started.set()
        users = [pool.submit(run_user, client, user, settings, clock)
                 for user, client in enumerate(user_clients)]
        cancels = [pool.submit(run_cancel_user, client, user, settings, clock)
                   for user, client in enumerate(cancel_clients)]
        probes = pool.submit(run_probes, probe_client, settings, expected, clock)
        records = [record for future in users for record in future.result()]
        records += [future.result() for future in cancels]
        records += probes.result()
        records += streams.result() if streams else []
    load_seconds = clock()
    burst = run_burst(user_clients or [probe_client], settings, clock)
    burst_seconds = clock() - load_seconds

    probe_records = [r for r in records if r.kind == "probe"]
    report = {"url": url, "settings": dataclasses.asdict(settings),
              "load_average_before": load_average_before, "load_average_after": os.getloadavg(),
              "load_seconds": load_seconds, "burst_seconds": burst_seconds,
              "outcomes": count_outcomes(records + burst),
              "generate": request_stats(records, "generate", settings.num_chars),
              "burst": request_stats(burst, "burst", settings.num_chars),
              "streams": request_stats(records, "stream", None),
              "greedy": {"probes": len(probe_records),
                         "equal": len([r for r in probe_records if r.outcome == COMPLETED]),
                         "different": len([r for r in probe_records
                                           if r.message == GREEDY_MISMATCH])},
              "problems": [dataclasses.asdict(r) for r in records + burst
                           if not is_acceptable(r)]}
    if sampler:
        sampler.stop()
        peak = max(sampler.samples + [rss_before])
        report["memory_mb"] = {"before": rss_before, "peak": peak, "after": resident_mb(pid),
                               "growth": peak - rss_before, "samples": len(sampler.samples)}
    return report


def count_outcomes(records: list[RequestRecord]) -> dict:
    """Return {kind: {outcome: count}}."""
    counts: dict = {}
    for record in records:
        by_outcome = counts.setdefault(record.kind, {})
        by_outcome[record.outcome] = by_outcome.get(record.outcome, 0) + 1
    return counts


def request_stats(records: list[RequestRecord], kind: str, num_chars: int | None) -> dict:
    """Compute throughput and latency of the served (or stopped) requests of `kind`.

    Latency runs from submit to result. `start` runs from submit until the job
    was first seen processing, or for a stream until its first text was shown.
    Throughput divides by the time from the first submit to the last result.
    """
    chosen = [r for r in records if r.kind == kind]
    done = [r for r in chosen if r.outcome in (COMPLETED, CANCELLED) and r.finished is not None]
    stats = {"requests": len(chosen), "done": len(done)}
    if not done:
        return stats
    span = max(r.finished for r in done) - min(r.submitted for r in chosen)
    latencies = [r.finished - r.submitted for r in done]
    starts = [r.started - r.submitted for r in done if r.started is not None]
    stats["seconds"] = span
    if kind != "stream":
        stats["requests_per_sec"] = len(done) / span
        stats["latency_ms"] = {"p50": 1000 * statistics.median(latencies),
                               "p95": 1000 * percentile(latencies, 0.95)}
    if num_chars:
        stats["chars_per_sec"] = len(done) * num_chars / span
    if starts:
        stats["start_ms"] = {"p50": 1000 * statistics.median(starts),
                             "p95": 1000 * percentile(starts, 0.95), "measured": len(starts)}
    return stats


def add_checks(report: dict, settings: LoadSettings, log_text: str | None) -> dict:
    """Add the pass/fail checks (and the server log's problem lines) to `report`."""
    checks = {"every request completed, was cancelled or was rejected as busy":
              not report["problems"]}
    if settings.probes:
        checks["greedy text under load equals the text alone"] = (
            report["greedy"]["equal"] == report["greedy"]["probes"] == settings.probes)
    if log_text is not None:
        report["log_problems"] = log_problems(log_text)
        checks["server log has no ERROR or Traceback line"] = not report["log_problems"]
    if "memory_mb" in report:
        checks[f"resident memory grew by at most {settings.max_rss_growth_mb:g} MB"] = (
            report["memory_mb"]["growth"] <= settings.max_rss_growth_mb)
    report["checks"] = checks
    return report


# ---------------------------------------------------------------------------- output


def machine_info() -> dict:
    model = next((line.split(":", 1)[1].strip()
                  for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine())
    versions = {"python": platform.python_version()}
    for package in ("gradio", "gradio_client", "jax", "playwright"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                             capture_output=True, text=True).stdout.split("\n")
    return {"cpu": model, "cores": os.cpu_count(),
            "cores_usable": len(os.sched_getaffinity(0)), "versions": versions,
            "git_commit": commit, "git_changed_files": [line[3:] for line in changed if line]}


def print_report(report: dict) -> None:
    settings = report["settings"]
    print(f"load: {settings['users']} users x {settings['requests_per_user']} generate "
          f"requests of {settings['num_chars']} characters, {settings['cancel_users']} "
          f"cancelling users, {settings['stream_users']} browser pages x "
          f"{settings['stream_cycles']} stopped streams, {settings['probes']} greedy probes; "
          f"then a burst of {settings['burst']} requests")
    print(f"{'requests':10} {'done':>5} {'req/s':>6} {'chars/s':>8} {'p50 ms':>7} "
          f"{'p95 ms':>7} {'start p50':>9} {'start p95':>9}")
    for kind in ("generate", "burst", "streams"):
        stats = report[kind]
        latency, start = stats.get("latency_ms", {}), stats.get("start_ms", {})
        columns = [(stats.get("requests_per_sec"), 6, ".1f"),
                   (stats.get("chars_per_sec"), 8, ".0f"),
                   (latency.get("p50"), 7, ".0f"), (latency.get("p95"), 7, ".0f"),
                   (start.get("p50"), 9, ".0f"), (start.get("p95"), 9, ".0f")]
        cells = [f"{'-' if value is None else format(value, spec):>{width}}"
                 for value, width, spec in columns]
        print(f"{kind:10} {stats['done']:5d} " + " ".join(cells))
    print("start: until the job was first seen processing or, for streams, until the first "
          "text was shown")
    print("outcomes:", json.dumps(report["outcomes"]))
    if "memory_mb" in report:
        memory = report["memory_mb"]
        print(f"resident memory: {memory['before']:.0f} MB before, {memory['peak']:.0f} MB peak "
              f"(+{memory['growth']:.0f} MB), {memory['after']:.0f} MB after")
    for line in report.get("log_problems", []):
        print("server log:", line)
    for problem in report["problems"][:10]:
        print("problem:", problem)
    for name, passed in report["checks"].items():
        print(f"{'PASS' if passed else 'FAIL'}  {name}")


def build_parser() -> argparse.ArgumentParser:
    defaults = LoadSettings()
    parser = argparse.ArgumentParser(
        description="Load-test the Concise RNN app on 127.0.0.1 with concurrent gradio_client "
                    "users, cancelled requests and stopped browser streams.",
        epilog="Counts are requests or users, times are seconds, memory is MB.")

    server = parser.add_argument_group("server")
    server.add_argument("--url", help="test the app already running at this http://127.0.0.1 "
                                      "address instead of starting one")
    server.add_argument("--pid", type=int, help="with --url: the server's process id, to "
                                                "sample its resident memory")
    server.add_argument("--server-log", help="with --url: the server's log file, to check for "
                                             "errors; without --url: where to write the started "
                                             "app's log (default: beside --out)")
    server.add_argument("--checkpoint-root", help="without --url: the app's --checkpoint-root "
                                                  "(default: the app's own default)")
    server.add_argument("--startup-timeout", type=float, default=180.0,
                        help="seconds to wait for a started app.py to respond "
                             "(default: %(default)s)")

    load = parser.add_argument_group("load")
    load.add_argument("--users", type=int, default=defaults.users,
                      help="concurrent gradio_client users sending generate requests "
                           "(default: %(default)s)")
    load.add_argument("--requests-per-user", type=int, default=defaults.requests_per_user,
                      help="generate requests each user sends, one after another "
                           "(default: %(default)s)")
    load.add_argument("--num-chars", type=int, default=defaults.num_chars,
                      help="characters generated per request, 1 to 1000 (default: %(default)s)")
    load.add_argument("--cell", default=defaults.cell,
                      help="model, as a checkpoint folder name (default: %(default)s)")
    load.add_argument("--cancel-users", type=int, default=defaults.cancel_users,
                      help="users who submit one request and cancel it after 0 to 0.5 s "
                           "(default: %(default)s)")
    load.add_argument("--stream-users", type=int, default=defaults.stream_users,
                      help="headless Chromium pages that start and stop streams, 0 = none "
                           "(default: %(default)s)")
    load.add_argument("--stream-cycles", type=int, default=defaults.stream_cycles,
                      help="Generate-then-Stop cycles per page (default: %(default)s)")
    load.add_argument("--probes", type=int, default=defaults.probes,
                      help="greedy requests sent during the load and compared with the text "
                           "alone (default: %(default)s)")
    load.add_argument("--burst", type=int, default=defaults.burst,
                      help="requests submitted at once after the load, to fill the queue "
                           "(default: %(default)s)")
    load.add_argument("--seed", type=int, default=defaults.seed,
                      help="first seed of the sampled requests and of the random delays "
                           "(default: %(default)s)")

    limits = parser.add_argument_group("limits and output")
    limits.add_argument("--timeout", type=float, default=defaults.timeout,
                        help="seconds allowed for the load and the burst; unfinished requests "
                             "count as timed out (default: %(default)s)")
    limits.add_argument("--max-rss-growth-mb", type=float, default=defaults.max_rss_growth_mb,
                        help="maximum growth of the server's resident memory in MB "
                             "(default: %(default)s)")
    limits.add_argument("--out", default="benchmarks/results/load_test.json",
                        help="JSON file for the report (default: %(default)s)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    counts = ("users", "requests_per_user", "cancel_users", "stream_users", "stream_cycles",
              "probes", "burst")
    for name in counts:
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be 0 or more, got "
                         f"{getattr(args, name)}")
    settings = LoadSettings(**{name: getattr(args, name) for name in counts},
                            num_chars=args.num_chars, cell=args.cell, timeout=args.timeout,
                            max_rss_growth_mb=args.max_rss_growth_mb, seed=args.seed)
    out = pathlib.Path(args.out)

    # Start the server, or find the part of its log that this run will write.
    process, server = None, {}
    if args.url:
        try:
            url, pid = check_loopback_url(args.url), args.pid
        except ValueError as error:
            parser.error(str(error))
        log_path = pathlib.Path(args.server_log) if args.server_log else None
        if log_path and not log_path.is_file():
            parser.error(f"--server-log {log_path} is not a file")
        log_start = log_path.stat().st_size if log_path else 0
    else:
        log_path = pathlib.Path(args.server_log or out.with_name(out.stem + "_app.log"))
        started = time.monotonic()
        process, url = start_server(log_path, args.checkpoint_root, args.startup_timeout)
        pid, log_start = process.pid, 0
        server = {"startup_seconds": time.monotonic() - started,
                  "checkpoint_root": args.checkpoint_root or "the app's default"}
        print(f"app.py responded at {url} after {server['startup_seconds']:.1f} s; "
              f"log: {log_path}")

    try:
        report = run_load(url, settings, pid)
    finally:
        if process:
            stop_server(process)

    log_text = None
    if log_path:
        with open(log_path, "rb") as log_file:
            log_file.seek(log_start)
            log_text = log_file.read().decode(errors="replace")
    report = add_checks(report, settings, log_text)
    report["server"] = server
    report["machine"] = machine_info()
    print_report(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"report: {out}")
    return 0 if all(report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
