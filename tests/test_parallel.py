"""Data parallelism over 4 forced CPU devices: same results as 1 device, batches really split."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from model.parallel import ParallelError, check_split, coordinator_settings, make_data_parallel
from model.pretrained import load

PROJECT = pathlib.Path(__file__).resolve().parents[1]
FOUR_DEVICES = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
                    JAX_PLATFORMS="cpu")


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory, corpus_text) -> dict:
    corpus = tmp_path_factory.mktemp("parallel") / "corpus.txt"
    corpus.write_text(corpus_text, encoding="utf-8")
    result = subprocess.run([sys.executable, str(PROJECT / "tests" / "sharded_steps.py"),
                             str(corpus)], env=FOUR_DEVICES, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_four_devices_give_the_parameters_of_one(sharded_run):
    assert sharded_run["num_devices"] == 4
    assert sharded_run["steps"][0] == sharded_run["steps"][1] > 0
    # Summation order differs between one device and an all-reduce over four.
    assert sharded_run["max_param_diff"] < 1e-4 * max(1.0, sharded_run["largest_param"])
    one, four = sharded_run["val_perplexity"]
    assert abs(one - four) < 1e-3 * one


def test_batches_are_split_over_the_four_devices(sharded_run):
    assert sharded_run["shard_devices"] == [0, 1, 2, 3]
    assert sharded_run["shard_shapes"] == [[2, 2, 16]] * 4  # (K, B / 4, T) per device
    assert sharded_run["shard_rows_match"]
    assert sharded_run["param_devices"] == 4  # parameters replicated on every device


@pytest.mark.parametrize("num_devices, available, batch_size, processes, message", [
    (4, 4, 6, 1, r"--batch-size 6 does not split evenly over 4 devices; use a multiple of 4 "
                 r"\(e.g. 4 or 8\) or change --devices"),
    (4, 4, 2, 1, r"use a multiple of 4 \(e.g. 4\)"),
    (3, 1, 6, 1, r"--devices 3 is not available: JAX sees 1 cpu device\(s\); pass --devices "
                 r"between 1 and 1"),
    (0, 4, 8, 1, r"--devices 0 is not available"),
    (3, 8, 6, 2, r"--devices 3 must be a multiple of the 2 processes"),
])
def test_an_impossible_split_names_the_fix(num_devices, available, batch_size, processes,
                                           message):
    with pytest.raises(ParallelError, match=message):
        check_split(num_devices, available, batch_size, processes)


def test_one_device_mesh_accepts_any_batch():
    assert make_data_parallel(None, 7).num_devices == len(jax.devices())


def test_train_cli_rejects_an_uneven_batch_on_four_devices(tmp_path, corpus_file):
    result = subprocess.run(
        [sys.executable, str(PROJECT / "train.py"), "--data", str(corpus_file), "--devices", "4",
         "--batch-size", "6", "--num-hiddens", "8", "--epochs", "1", "--no-progress",
         "--checkpoint-dir", str(tmp_path / "run")], env=FOUR_DEVICES, capture_output=True,
        text=True, timeout=300)
    assert result.returncode == 2
    assert ("invalid setting: --batch-size 6 does not split evenly over 4 devices; use a "
            "multiple of 4 (e.g. 4 or 8) or change --devices") in result.stderr
    assert "Traceback" not in result.stderr


def test_coordinator_settings_need_all_three(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    assert coordinator_settings(None, None, None) is None
    assert coordinator_settings("10.0.0.1:1234", 2, 1) == ("10.0.0.1:1234", 2, 1)
    with pytest.raises(ParallelError, match="--num-processes N --process-id I"):
        coordinator_settings("10.0.0.1:1234", None, None)
    with pytest.raises(ParallelError, match=r"--process-id must be in \[0, 2\), got 2"):
        coordinator_settings("10.0.0.1:1234", 2, 2)
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    assert coordinator_settings(None, None, None) == ("10.0.0.1:1234", 4, 3)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_train_like_one_and_only_process_0_logs(tmp_path, corpus_file):
    """Two train.py processes with 2 devices each, joined through a coordinator on 127.0.0.1."""
    common = [sys.executable, str(PROJECT / "train.py"), "--data", str(corpus_file),
              "--cell", "gru", "--num-hiddens", "16", "--num-layers", "1", "--epochs", "1",
              "--batch-size", "16", "--num-steps", "32", "--no-progress"]
    port = free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu", JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}")
    processes = [subprocess.Popen(
        common + ["--checkpoint-dir", str(tmp_path / "two"), "--coordinator",
                  f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(index)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for index in (0, 1)]
    logs = [process.communicate(timeout=600)[1] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], logs[0][-2000:]
    assert "on 4 cpu device(s)" in logs[0]
    assert "in 2 process(es)" in logs[0]
    assert "epoch   1" in logs[0]
    assert "epoch   1" not in logs[1]

    single = subprocess.run(common + ["--checkpoint-dir", str(tmp_path / "one"), "--devices",
                                      "1"], capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    two, one = load(tmp_path / "two", "latest"), load(tmp_path / "one", "latest")
    assert two.step == one.step > 0
    for left, right in zip(jax.tree_util.tree_leaves(two.params),
                           jax.tree_util.tree_leaves(one.params)):
        np.testing.assert_allclose(np.asarray(left), np.asarray(right), atol=1e-4)
