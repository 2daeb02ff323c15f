"""The command-line entry points, run as a user runs them."""

import json
import pathlib
import re
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from model import pretrained

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY_FLAGS = ["--cell", "gru", "--num-hiddens", "8", "--epochs", "30", "--batch-size", "4",
              "--num-steps", "16", "--no-progress", "--sample-every", "0"]


def run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus_text):
    folder = tmp_path_factory.mktemp("cli")
    data = folder / "small.txt"
    data.write_text(corpus_text[:6_000], encoding="utf-8")
    checkpoint_dir = folder / "gru"
    result = run(str(ROOT / "train.py"), "--data", str(data), "--checkpoint-dir",
                 str(checkpoint_dir), *TINY_FLAGS)
    return data, checkpoint_dir, result


@pytest.fixture(scope="module")
def uninterrupted(trained):
    """A copy of the finished run, kept apart because other tests move or retrain `trained`."""
    _, checkpoint_dir, result = trained
    assert result.returncode == 0, result.stderr
    copy = checkpoint_dir.with_name("uninterrupted")
    shutil.copytree(checkpoint_dir, copy)
    return pretrained.load(copy, which="latest")


def test_train_exits_zero_and_writes_checkpoint(trained):
    _, checkpoint_dir, result = trained
    assert result.returncode == 0, result.stderr
    assert "epoch   1" in result.stderr
    assert any(path.name.isdigit() for path in checkpoint_dir.iterdir())


def test_generate_reads_the_checkpoint(trained):
    _, checkpoint_dir, _ = trained
    result = run("-m", "model.generate", "--checkpoint", str(checkpoint_dir), "--prefix",
                 "The Time", "--num-chars", "25", "--temperature", "0")
    assert result.returncode == 0, result.stderr
    line = result.stdout.rstrip("\n")
    assert line.startswith("the time")
    assert len(line) == len("the time") + 25


def test_evaluate_prints_json(trained):
    data, checkpoint_dir, _ = trained
    result = run("-m", "model.evaluate", "--checkpoint", str(checkpoint_dir), "--data", str(data),
                 "--split", "val", "--json")
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert set(scores) >= {"perplexity", "bits_per_char", "num_chars"}
    assert 1.0 < scores["perplexity"] < 30
    assert scores["num_chars"] == int(len(data.read_text()) * 0.05) - 1 or scores["num_chars"] > 0


def test_rerun_without_resume_keeps_finished_run(trained):
    data, checkpoint_dir, _ = trained
    result = run(str(ROOT / "train.py"), "--data", str(data), "--checkpoint-dir",
                 str(checkpoint_dir), *TINY_FLAGS)
    assert result.returncode == 0, result.stderr
    backup = checkpoint_dir.with_name(checkpoint_dir.name + ".previous")
    assert "moved it to" in result.stderr
    assert any(path.name.isdigit() for path in backup.iterdir())


def test_resume_finished_run_says_so(trained):
    data, checkpoint_dir, _ = trained
    result = run(str(ROOT / "train.py"), "--data", str(data), "--checkpoint-dir",
                 str(checkpoint_dir), "--resume", *TINY_FLAGS)
    assert result.returncode == 0, result.stderr
    assert "already finished" in result.stderr


def test_train_rejects_bad_setting_with_exit_code(trained, tmp_path):
    # tests/test_robustness_cli.py checks every flag in-process; this checks the real exit code.
    data = trained[0]
    result = run(str(ROOT / "train.py"), "--data", str(data), "--checkpoint-dir",
                 str(tmp_path / "run"), *TINY_FLAGS, "--num-hiddens", "0")
    assert result.returncode == 2
    assert "invalid setting: --num-hiddens must be at least 1, got 0" in result.stderr
    assert "Traceback" not in result.stderr


def test_train_missing_corpus_names_the_file(tmp_path):
    result = run(str(ROOT / "train.py"), "--data", str(tmp_path / "missing.txt"),
                 "--checkpoint-dir", str(tmp_path / "run"), *TINY_FLAGS)
    assert result.returncode == 1
    assert "corpus file not found" in result.stderr
    assert "missing.txt" in result.stderr


def test_generate_missing_checkpoint_fails_clearly(tmp_path):
    result = run("-m", "model.generate", "--checkpoint", str(tmp_path / "none"))
    assert result.returncode == 1
    assert "checkpoint directory not found" in result.stderr


def test_help_lists_units():
    result = run(str(ROOT / "train.py"), "--help")
    assert result.returncode == 0
    for text in ("--num-steps", "characters per training sequence", "0 = no clipping",
                 "--resume", "--preset"):
        assert text in result.stdout


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_then_resume_matches(trained, uninterrupted, tmp_path, signal_number):
    """Ctrl-C or SIGTERM, then the same command with --resume: the result of one straight run."""
    data = trained[0]
    checkpoint_dir = tmp_path / "run"
    command = [sys.executable, str(ROOT / "train.py"), "--data", str(data), "--checkpoint-dir",
               str(checkpoint_dir), *TINY_FLAGS]
    # A shell starts background jobs with SIGINT ignored, which a child inherits, and
    # Python then never raises KeyboardInterrupt. A handled signal is reset to the
    # default at exec, so handling it here while starting gives the child a terminal's.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    # Interrupt once the first epoch is logged, so it lands in a later epoch of thirty.
    lines = []
    for line in process.stderr:
        lines.append(line)
        if "epoch   1 " in line:
            process.send_signal(signal_number)
            break
    output = "".join(lines) + process.communicate(timeout=120)[1]
    assert process.returncode == 130, output
    saved = re.search(r"interrupted: saved step (\d+) \(epoch (\d+), batch (\d+)\); continue "
                      r"with --resume", output)
    assert saved, output
    step, epoch, batch = map(int, saved.groups())
    assert epoch <= 30, "the interrupt landed after the last epoch; the run was not interrupted"

    resumed = subprocess.run([*command, "--resume"], cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    # Both messages name the epoch in progress (1-based) and the batches done in it.
    assert (f"resumed from {checkpoint_dir} at step {step} (epoch {epoch}, batch {batch})"
            in resumed.stderr)
    first_epoch_logged = int(re.search(r"epoch +(\d+) ", resumed.stderr.split("resumed from")[1])
                             .group(1))
    assert first_epoch_logged == epoch

    final = pretrained.load(checkpoint_dir, which="latest")
    assert final.step == uninterrupted.step
    assert final.meta["finished"] is True
    for key in ("val_perplexity", "train_perplexity", "step"):
        assert ([record[key] for record in final.meta["history"]]
                == [record[key] for record in uninterrupted.meta["history"]]), key
    for resumed_leaf, straight_leaf in zip(jax.tree_util.tree_leaves(final.params),
                                           jax.tree_util.tree_leaves(uninterrupted.params)):
        np.testing.assert_array_equal(resumed_leaf, straight_leaf)
