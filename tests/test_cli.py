"""The command-line entry points, run as a user runs them."""

import json
import pathlib
import signal
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY_FLAGS = ["--cell", "gru", "--num-hiddens", "8", "--epochs", "1", "--batch-size", "4",
              "--num-steps", "16", "--no-progress"]


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


@pytest.mark.parametrize("flags, message", [
    (["--num-hiddens", "0"], "num_hiddens must be at least 1"),
    (["--dropout", "1.5"], "dropout must be in [0, 1)"),
    (["--batch-size", "100000"], "--batch-size"),
])
def test_train_rejects_bad_settings(trained, tmp_path, flags, message):
    data = trained[0]
    result = run(str(ROOT / "train.py"), "--data", str(data), "--checkpoint-dir",
                 str(tmp_path / "run"), *TINY_FLAGS, *flags)
    assert result.returncode != 0
    assert message in result.stderr


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
def test_signal_saves_then_resume_finishes(trained, tmp_path, signal_number):
    data = trained[0]
    checkpoint_dir = tmp_path / "run"
    flags = ["--data", str(data), "--checkpoint-dir", str(checkpoint_dir), "--cell", "gru",
             "--num-hiddens", "8", "--epochs", "200", "--batch-size", "4", "--num-steps", "16",
             "--no-progress", "--sample-every", "0"]
    process = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *flags], cwd=ROOT,
                               stderr=subprocess.PIPE, text=True)
    # Wait for the second epoch line, so at least one checkpoint exists, then interrupt.
    lines = []
    for line in process.stderr:
        lines.append(line)
        if "epoch   2 " in line:
            process.send_signal(signal_number)
            break
    rest = process.communicate(timeout=120)[1]
    output = "".join(lines) + rest
    assert process.returncode == 130, output
    assert "interrupted: saved step" in output
    assert "--resume" in output

    # Resume with a shorter schedule, so the test ends quickly.
    resumed = run(str(ROOT / "train.py"), *flags, "--resume", "--epochs", "6")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr
    assert "epoch   6 " in resumed.stderr
    assert "epoch   1 " not in resumed.stderr
