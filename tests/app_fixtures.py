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


def play_text(num_chars: int = 12_000) -> str:
    """Return deterministic dialogue in the layout of a play: a speaker's name, then lines."""
    speakers = ["ROMEO", "JULIET", "First Citizen", "KING HENRY IV"]
    words = "o my lord what light is this good night and sweet love the time hath come".split()
    rng = random.Random(0)
    parts = []
    while sum(map(len, parts)) < num_chars:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(4, 9)))
        parts.append(f"{rng.choice(speakers)}:\n{line.capitalize()}{rng.choice('.,!?')}\n\n")
    return "".join(parts)[:num_chars]


def build_checkpoints(root: pathlib.Path, cells=("rnn", "lstm")) -> pathlib.Path:
    """Train one tiny model per cell for 2 epochs into root/<cell>."""
    corpus = build_corpus(corpus_text(), "d2l", "full", 16)
    train_config = TrainConfig(batch_size=8, num_steps=16, epochs=2, steps_per_call=4, lr=1e-2,
                               sample_every=0)
    for cell in cells:
        model_config = ModelConfig(vocab_size=len(corpus.vocab), cell=cell, num_hiddens=16)
        fit(model_config, train_config, corpus, checkpoint_dir=root / cell, progress=False)
    return root


def build_raw_checkpoint(directory: pathlib.Path) -> pathlib.Path:
    """Train a tiny LSTM for 2 epochs on `play_text()` with raw preprocessing into `directory`."""
    corpus = build_corpus(play_text(), "raw", "full", 16)
    train_config = TrainConfig(batch_size=8, num_steps=16, epochs=2, steps_per_call=4, lr=1e-2,
                               preprocess="raw", sample_every=0)
    model_config = ModelConfig(vocab_size=len(corpus.vocab), cell="lstm", num_hiddens=16)
    fit(model_config, train_config, corpus, checkpoint_dir=directory, progress=False)
    return directory


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
        stop_app(process)


def stop_app(process: subprocess.Popen) -> None:
    """Stop a server from `start_app` with SIGTERM, or SIGKILL after 20 s."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
