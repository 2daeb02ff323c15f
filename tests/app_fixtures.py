"""Helpers shared by the app tests: tiny checkpoints, and `python app.py` on a loopback port."""

import contextlib
import os
import pathlib
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Iterator

from model.config import ModelConfig, TrainConfig
from model.data import build_corpus
from model.trainer import fit

PROJECT = pathlib.Path(__file__).resolve().parents[1]
TIME_MACHINE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "timemachine.txt"
STARTUP_TIMEOUT = 180  # seconds; startup compiles every model on a shared 2-core CPU


def corpus_text(num_chars: int = 20_000) -> str:
    """Return the start of the Time Machine if it is beside the project, else generated prose."""
    if TIME_MACHINE.is_file():
        return TIME_MACHINE.read_text(encoding="utf-8")[:num_chars]
    words = "the time traveller machine said we it was a of and to in that his hand".split()
    rng = random.Random(0)
    return " ".join(rng.choice(words) for _ in range(num_chars // 4))


def build_checkpoints(root: pathlib.Path, cells=("rnn", "lstm")) -> pathlib.Path:
    """Train one tiny model per cell for 2 epochs into root/<cell>."""
    corpus = build_corpus(corpus_text(), "d2l", "full", 16)
    train_config = TrainConfig(batch_size=8, num_steps=16, epochs=2, steps_per_call=4, lr=1e-2,
                               sample_every=0)
    for cell in cells:
        model_config = ModelConfig(vocab_size=len(corpus.vocab), cell=cell, num_hiddens=16)
        fit(model_config, train_config, corpus, checkpoint_dir=root / cell, progress=False)
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(checkpoints: pathlib.Path, workdir: pathlib.Path) -> tuple[subprocess.Popen, str]:
    """Start `python app.py` from another folder, wait until it responds, return it and its URL."""
    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
               CONCISE_RNN_CHECKPOINTS=str(checkpoints))
    log_file = open(workdir / "app.log", "w")
    process = subprocess.Popen([sys.executable, str(PROJECT / "app.py")], cwd=workdir, env=env,
                               stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with {process.returncode}:\n"
                               f"{(workdir / 'app.log').read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return process, url
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"app.py did not respond within {STARTUP_TIMEOUT} s:\n"
                       f"{(workdir / 'app.log').read_text()}")


@contextlib.contextmanager
def running_app(tmp_path_factory) -> Iterator[str]:
    """Serve tiny rnn and lstm checkpoints with `python app.py`, yield its URL, then stop it."""
    checkpoints = build_checkpoints(tmp_path_factory.mktemp("checkpoints"))
    process, url = start_app(checkpoints, tmp_path_factory.mktemp("workdir"))
    try:
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
