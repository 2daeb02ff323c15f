"""train.py, model.generate and model.evaluate under bad input, damaged checkpoints and kills.

Every failure case must end with one error message that names the file or flag
and the fix, a non-zero exit code and no Python traceback. Most cases call the
commands' `main` in this process, so JAX starts and compiles once. The SIGKILL
test starts `train.py` as a real process, because only a process can be killed.
"""

import contextlib
import io
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import train
from model import checkpoint, evaluate, generate, pretrained
from model.config import ModelConfig
from model.data import build_corpus
from model.trainer import fit

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY_FLAGS = ["--cell", "gru", "--num-hiddens", "8", "--num-layers", "1", "--epochs", "2",
              "--batch-size", "4", "--num-steps", "8", "--no-progress", "--sample-every", "0"]
NUM_CHARS = 12  # generated in every test, so sampling compiles once
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
needs_non_root = pytest.mark.skipif(IS_ROOT, reason="root may write to a folder with mode 0o500")


def run_main(main, argv: list[str]) -> tuple[int, str, str]:
    """Call a command's `main(argv)` here; return its exit code, stdout and stderr.

    The commands reconfigure logging and train.py installs a SIGTERM handler, so
    both are put back afterwards.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    sigterm = signal.getsignal(signal.SIGTERM)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exit_:  # argparse rejects a flag this way
                code = exit_.code
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        signal.signal(signal.SIGTERM, sigterm)
    return code, out.getvalue(), err.getvalue()


def error_line(code: int, err: str, expected_code: int) -> str:
    """Check the exit code, that stderr has no traceback and one ERROR line; return that line."""
    assert code == expected_code, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "ERROR" in line]
    assert len(errors) == 1, err
    return errors[0]


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def files(tmp_path_factory, corpus_text) -> dict:
    """Corpora good and bad, written once for the module."""
    folder = tmp_path_factory.mktemp("corpora")
    contents = {
        "small": corpus_text[:6_000].encode("utf-8"),
        "empty": b"",
        "whitespace": b" \n\t\n",
        "binary": b"PK\x03\x04\x00\x00\x08\x00binary",
        "latin1": "café au lait".encode("latin-1"),
        "too short": b"ab",
        "no letters": b"1234 5678 90",
        "other alphabet": ("Машина времени " * 200).encode("utf-8"),
        "other letters": " ".join(["abc", "gafe", "bead", "cab", "fad"] * 300).encode("utf-8"),
    }
    paths = {}
    for name, data in contents.items():
        paths[name] = folder / (name.replace(" ", "-") + ".txt")
        paths[name].write_bytes(data)
    paths["missing"] = folder / "missing.txt"
    return paths


@pytest.fixture(scope="module")
def trained(tmp_path_factory, files) -> tuple[pathlib.Path, int]:
    """A run of TINY_FLAGS stopped after its first of two epochs; returns its folder and step.

    It is trained in this process with the settings train.py resolves from the flags,
    and stopped the way Ctrl-C stops it, so its one checkpoint is both the latest and
    the best, and `train.py --resume` continues it.
    """
    directory = tmp_path_factory.mktemp("trained") / "gru"
    args = train.build_parser().parse_args(["--data", str(files["small"]), *TINY_FLAGS])
    cell, model_values, config = train.resolve_settings(args)
    corpus = build_corpus(files["small"].read_text(encoding="utf-8"), config.preprocess,
                          config.split, config.num_steps)
    model = ModelConfig(vocab_size=len(corpus.vocab), cell=cell, **model_values)

    def stop_after_first_epoch(record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(model, config, corpus, checkpoint_dir=directory, progress=False,
            on_epoch=stop_after_first_epoch)
    steps = [int(path.name) for path in directory.iterdir() if path.name.isdigit()]
    assert len(steps) == 1, steps
    return directory, steps[0]


def damaged_copy(trained, target: pathlib.Path, kind: str) -> pathlib.Path:
    """Return a checkpoint folder at `target` broken in the way `kind` names."""
    directory, step = trained
    if kind == "missing":
        return target
    if kind == "file":
        target.write_text("not a folder")
        return target
    if kind in ("empty", "unfinished save only"):
        target.mkdir()
        if kind == "unfinished save only":
            (target / f"{step}.orbax-checkpoint-tmp" / "state").mkdir(parents=True)
        return target
    shutil.copytree(directory, target)
    step_dir = target / str(step)
    if kind == "truncated":
        data_files = [path for path in (step_dir / "state").rglob("*") if path.is_file()
                      and path.parent.name == "d"]
        assert data_files, "the state item holds no array data file"
        for path in data_files:
            os.truncate(path, path.stat().st_size // 2)
    elif kind == "garbled meta":
        (step_dir / "meta" / "metadata").write_text('{"model_config": {"cell": "gr')
    elif kind == "meta without configs":
        (step_dir / "meta" / "metadata").write_text('{"format_version": 1}')
    elif kind == "garbled metrics":
        (step_dir / "metrics" / "metrics").write_text("{val_perplexity: 3")
    else:
        raise ValueError(kind)
    return target


# ----------------------------------------------------------------------------- bad corpora


@pytest.mark.parametrize("name, message", [
    ("missing", "corpus file not found: {path}"),
    ("empty", "corpus file is empty: {path}"),
    ("whitespace", "corpus file is empty: {path}"),
    ("binary", "corpus file looks binary (it contains NUL bytes): {path}"),
    ("latin1", "corpus file is not valid UTF-8 (invalid continuation byte at byte 3): {path}. "
               "Convert it"),
    ("too short", "the training text (1 characters) is too short for batch_size 4 x num_steps 8; "
                  "lower --batch-size or --num-steps"),
    ("no letters", "the corpus has 1 characters after d2l preprocessing, which keeps only "
                   "letters and spaces; use --preprocess raw or another file"),
])
def test_train_rejects_bad_corpus(files, tmp_path, name, message):
    path = files[name]
    code, _, err = run_main(train.main, ["--data", str(path), "--checkpoint-dir",
                                         str(tmp_path / "run"), *TINY_FLAGS])
    line = error_line(code, err, 1)
    assert message.format(path=path) in line
    assert "epoch   1" not in err


@pytest.mark.parametrize("name, message", [
    ("missing", "corpus file not found: {path}"),
    ("empty", "corpus file is empty: {path}"),
    ("binary", "corpus file looks binary (it contains NUL bytes): {path}"),
    ("latin1", "corpus file is not valid UTF-8 (invalid continuation byte at byte 3): {path}"),
    ("too short", "cannot score {path}: its val part (full split) has 0 characters and at least "
                  "2 are needed; pass a longer text"),
    ("other alphabet", "cannot score {path}: 1 of its characters after d2l preprocessing are in "
                       "the checkpoint's vocabulary"),
])
def test_evaluate_rejects_bad_corpus(trained, files, name, message):
    path = files[name]
    code, out, err = run_main(evaluate.main, ["--checkpoint", str(trained[0]), "--data",
                                              str(path), "--split", "val"])
    line = error_line(code, err, 1)
    assert message.format(path=path) in line
    assert out == ""


def test_evaluate_names_the_fix_for_another_alphabet(trained, files):
    code, _, err = run_main(evaluate.main, ["--checkpoint", str(trained[0]), "--data",
                                            str(files["no letters"]), "--split", "val"])
    assert error_line(code, err, 1).endswith(
        "and at least 2 are needed; pass a text written with the characters the model was "
        "trained on")


# ------------------------------------------------------------------------- impossible sizes


@pytest.mark.parametrize("flags, code, message", [
    (["--num-hiddens", "0"], 2, "invalid setting: --num-hiddens must be at least 1, got 0"),
    (["--num-hiddens", "-8"], 2, "invalid setting: --num-hiddens must be at least 1, got -8"),
    (["--num-layers", "0"], 2, "invalid setting: --num-layers must be at least 1, got 0"),
    (["--num-steps", "0"], 2, "invalid setting: --num-steps must be at least 1, got 0"),
    (["--num-steps", "100000"], 1, "is too short for batch_size 4 x num_steps 100000; lower "
                                   "--batch-size or --num-steps"),
    (["--batch-size", "0"], 2, "invalid setting: --batch-size must be at least 1, got 0"),
    (["--batch-size", "100000"], 1, "is too short for batch_size 100000 x num_steps 8; lower "
                                    "--batch-size or --num-steps"),
    (["--epochs", "0"], 2, "invalid setting: --epochs must be at least 1, got 0"),
    (["--lr", "-0.1"], 2, "invalid setting: --lr must be a positive finite number, got -0.1"),
    (["--lr", "nan"], 2, "invalid setting: --lr must be a positive finite number, got nan"),
    (["--lr", "inf"], 2, "invalid setting: --lr must be a positive finite number, got inf"),
    (["--dropout", "1"], 2, "invalid setting: --dropout must be in [0, 1), got 1.0"),
    (["--recurrent-dropout", "1.5"], 2,
     "invalid setting: --recurrent-dropout must be in [0, 1), got 1.5"),
    (["--grad-clip", "-1"], 2,
     "invalid setting: --grad-clip must be 0 (off) or positive, got -1.0"),
    (["--warmup-epochs", "-1"], 2,
     "invalid setting: --warmup-epochs must be 0 or a positive finite number, got -1.0"),
    (["--seed", "-1"], 2, "invalid setting: --seed must be 0 or positive, got -1"),
    (["--steps-per-call", "0"], 2, "invalid setting: --steps-per-call must be at least 1, got 0"),
])
def test_train_rejects_impossible_sizes(files, tmp_path, flags, code, message):
    returned, _, err = run_main(train.main, ["--data", str(files["small"]), "--checkpoint-dir",
                                             str(tmp_path / "run"), *TINY_FLAGS, *flags])
    assert message in error_line(returned, err, code)
    assert "epoch   1" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
    (["--cell", "transformer"], "argument --cell: invalid choice: 'transformer'"),
])
def test_train_rejects_malformed_flags(files, tmp_path, flags, message):
    code, _, err = run_main(train.main, ["--data", str(files["small"]), "--checkpoint-dir",
                                         str(tmp_path / "run"), *TINY_FLAGS, *flags])
    assert code == 2
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert message in errors[0]


# --------------------------------------------------------------------- broken checkpoints


LOAD_CASES = [
    ("missing", "checkpoint directory not found: {dir}"),
    ("file", "{dir} is a file; pass the checkpoint folder instead"),
    ("empty", "no complete checkpoint in {dir}; it contains no step folder. Train one with "
              "`python train.py --checkpoint-dir {dir}`"),
    ("unfinished save only", "no complete checkpoint in {dir}; it contains only the unfinished "
                             "save {step}.orbax-checkpoint-tmp, which is never loaded"),
    ("truncated", "could not restore step {step} from {dir}: "),
    ("garbled meta", "could not read the metadata of step {step} in {dir}: "
                     "{step}/meta/metadata: JSONDecodeError: "),
    ("meta without configs", "could not read the metadata of step {step} in {dir}: "
                             "{step}/meta/metadata: it lacks model_config, train_config, vocab, "
                             "history; restore the folder from a copy or train the model again"),
    ("garbled metrics", "could not open the checkpoints in {dir}: JSONDecodeError: "),
]
DAMAGED_SUFFIX = "restore the folder from a copy or train the model again"


@pytest.mark.parametrize("command", ["generate", "evaluate"])
@pytest.mark.parametrize("kind, message", LOAD_CASES)
def test_cli_rejects_broken_checkpoint(trained, files, tmp_path, command, kind, message):
    directory = damaged_copy(trained, tmp_path / "ckpt", kind)
    if command == "generate":
        code, out, err = run_main(generate.main, ["--checkpoint", str(directory)])
    else:
        code, out, err = run_main(evaluate.main, ["--checkpoint", str(directory), "--data",
                                                  str(files["small"]), "--split", "val"])
    line = error_line(code, err, 1)
    assert message.format(dir=directory, step=trained[1]) in line
    if kind in ("truncated", "garbled meta", "garbled metrics"):
        assert line.endswith(DAMAGED_SUFFIX)
    assert "tensorstore_spec" not in line  # the message is one line, not TensorStore's spec
    assert out == ""


@pytest.mark.parametrize("kind, resume, flags, message", [
    ("truncated", True, [], "could not restore step {step} from {dir}: "),
    ("garbled meta", True, [], "could not read the metadata of step {step} in {dir}: "
                               "{step}/meta/metadata: JSONDecodeError: "),
    ("garbled meta", False, [], "could not read the metadata of step {step} in {dir}: "),
    ("file", True, [], "--checkpoint-dir {dir} is a file, not a folder; choose another path"),
    ("intact", True, ["--cell", "lstm"],
     "cannot resume, the model differs from the checkpoint's (cell: checkpoint 'gru' vs "
     "requested 'lstm'); pass the checkpoint's values to resume it, or choose another "
     "--checkpoint-dir"),
    ("intact", True, ["--batch-size", "2"], "cannot resume, batch_size differs: checkpoint 4 vs "
                                            "requested 2; pass the checkpoint's values"),
    ("intact", True, ["--grad-clip", "0"],
     "cannot resume, grad_clip differs: checkpoint 1.0 vs requested 0.0, and switching "
     "clipping on or off changes the optimizer state"),
    ("intact", True, ["--data", "other letters"],
     "cannot resume, the vocabulary differs: checkpoint has {vocab_size} characters {vocab!r}, "
     "the corpus gives 8 ' abcdefg'; resume with the --data and --preprocess the run started "
     "with, or choose another --checkpoint-dir"),
])
def test_resume_rejects_broken_or_other_checkpoint(trained, files, tmp_path, kind, resume, flags,
                                                   message):
    directory = tmp_path / "ckpt"
    if kind == "intact":
        shutil.copytree(trained[0], directory)
    else:
        damaged_copy(trained, directory, kind)
    flags = [str(files[flag]) if flag in files else flag for flag in flags]
    code, _, err = run_main(train.main, ["--data", str(files["small"]), "--checkpoint-dir",
                                         str(directory), *TINY_FLAGS,
                                         *(["--resume"] if resume else []), *flags])
    meta = json.loads((trained[0] / str(trained[1]) / "meta" / "metadata").read_text())
    vocab = "".join(meta["vocab"])
    expected = message.format(dir=directory, step=trained[1], vocab=vocab, vocab_size=len(vocab))
    assert expected in error_line(code, err, 1)
    assert "epoch   " not in err


@needs_non_root
def test_train_rejects_unwritable_directory(files, tmp_path):
    directory = tmp_path / "read-only"
    directory.mkdir(mode=0o500)
    code, _, err = run_main(train.main, ["--data", str(files["small"]), "--checkpoint-dir",
                                         str(directory), *TINY_FLAGS])
    assert error_line(code, err, 1).endswith(
        f"cannot write to the checkpoint directory {directory} (Permission denied); choose "
        "another --checkpoint-dir or make this one writable")


@needs_non_root
def test_resume_rejects_unwritable_directory(trained, files, tmp_path):
    directory = tmp_path / "read-only"
    shutil.copytree(trained[0], directory)
    directory.chmod(0o500)
    code, _, err = run_main(train.main, ["--data", str(files["small"]), "--checkpoint-dir",
                                         str(directory), *TINY_FLAGS, "--resume"])
    assert f"cannot write to the checkpoint directory {directory}" in error_line(code, err, 1)


@needs_non_root
def test_evaluate_save_rejects_unwritable_directory(trained, files, tmp_path):
    directory = tmp_path / "read-only"
    shutil.copytree(trained[0], directory)
    directory.chmod(0o500)
    code, out, err = run_main(evaluate.main, ["--checkpoint", str(directory), "--data",
                                              str(files["small"]), "--split", "val", "--save"])
    assert error_line(code, err, 1).endswith(
        f"--save cannot write to {directory}; make the folder writable or leave --save out")
    assert out == ""


def test_generate_reads_a_read_only_checkpoint(trained, tmp_path):
    directory = tmp_path / "read-only"
    shutil.copytree(trained[0], directory)
    directory.chmod(0o500)
    try:
        code, out, err = run_main(generate.main, ["--checkpoint", str(directory), "--num-chars",
                                                  str(NUM_CHARS), "--temperature", "0"])
    finally:
        directory.chmod(0o700)
    assert code == 0, err
    assert f"loaded step {trained[1]} of {directory}" in err
    assert len(out.rstrip("\n")) == len("the time traveller") + NUM_CHARS


def test_rerun_without_resume_keeps_unfinished_run(trained, files, tmp_path):
    directory = tmp_path / "ckpt"
    shutil.copytree(trained[0], directory)
    code, _, err = run_main(train.main, ["--data", str(files["small"]), "--checkpoint-dir",
                                         str(directory), *TINY_FLAGS])
    assert error_line(code, err, 1).endswith(
        f"{directory} contains an unfinished run (1 of 2 epochs); pass --resume to continue it "
        "or --overwrite to discard it")
    assert sorted(path.name for path in directory.iterdir()) == [str(trained[1])]


# ----------------------------------------------------------------------- non-finite loss


def test_non_finite_loss_keeps_last_good_checkpoint(trained, files, tmp_path):
    """A resumed run that diverges stops with exit code 1; its last good epoch stays the best."""
    directory = tmp_path / "run"
    shutil.copytree(trained[0], directory)
    good = pretrained.load(directory)

    # A learning rate this large makes the parameters overflow within a few steps.
    code, _, err = run_main(train.main, ["--data", str(files["small"]), "--checkpoint-dir",
                                         str(directory), *TINY_FLAGS, "--resume", "--lr", "1e30"])
    line = error_line(code, err, 1)
    assert re.search(r"the training loss became (nan|inf|-inf) at epoch 2, step \d+;", line), line
    assert line.endswith("no checkpoint was written after the last good one. Lower --lr or "
                         "keep --grad-clip on")

    manager = checkpoint.open_manager(directory, read_only=True)
    try:
        assert manager.all_steps() == [good.step]
        assert manager.best_step() == good.step
    finally:
        manager.close()
    after = pretrained.load(directory)
    assert after.step == good.step
    for before_leaf, after_leaf in zip(jax.tree_util.tree_leaves(good.params),
                                       jax.tree_util.tree_leaves(after.params)):
        np.testing.assert_array_equal(before_leaf, after_leaf)


# -------------------------------------------------------------------- SIGKILL during a save


def kill_during_save(flags: list[str], directory: pathlib.Path, log_path: pathlib.Path,
                     timeout: float = 240.0) -> tuple[int, str]:
    """Start train.py and SIGKILL it while a save after the first complete one is in flight.

    Returns the newest complete step and the name of the unfinished save's folder, or
    (-1, "") when the save finished between seeing its folder and the kill landing.
    """
    with open(log_path, "w") as log_file:
        process = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *flags], cwd=ROOT,
                                   stderr=log_file, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and process.poll() is None:
                names = os.listdir(directory) if directory.is_dir() else []
                complete = [int(name) for name in names if name.isdigit()]
                unfinished = [name for name in names if checkpoint.TMP_DIR_SUFFIX in name]
                if complete and unfinished:
                    process.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.001)
            else:
                pytest.fail(f"no save started within {timeout} s:\n{log_path.read_text()}")
        finally:
            if process.poll() is None:
                process.kill()  # a no-op after the SIGKILL above, a cleanup after a failure
            process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, log_path.read_text()
    if not (directory / unfinished[0]).is_dir():
        return -1, ""
    return max(complete), unfinished[0]


def test_sigkill_during_save_then_resume(files, tmp_path):
    directory = tmp_path / "run"
    flags = ["--data", str(files["small"]), "--checkpoint-dir", str(directory), *TINY_FLAGS,
             "--epochs", "200"]
    for _ in range(3):  # the kill can land just after the save's final rename
        shutil.rmtree(directory, ignore_errors=True)
        previous, unfinished = kill_during_save(flags, directory, tmp_path / "killed.log")
        if previous > 0:
            break
    else:
        pytest.fail("three kills in a row landed after the save had finished")
    killed_step = int(unfinished.split(".")[0])
    assert killed_step > previous

    # The previous checkpoint is intact, and loading never picks the unfinished save.
    latest = pretrained.load(directory, which="latest")
    assert latest.step == previous
    epochs_done = len(latest.meta["history"])
    assert latest.meta["history"][-1]["step"] == previous
    best = pretrained.load(directory)
    assert (directory / str(best.step)).is_dir()
    assert best.step != killed_step
    code, out, err = run_main(generate.main, ["--checkpoint", str(directory), "--num-chars",
                                              str(NUM_CHARS), "--temperature", "0"])
    assert code == 0, err
    assert f"loaded step {best.step} of {directory}" in err
    assert len(out.rstrip("\n")) == len("the time traveller") + NUM_CHARS
    assert (directory / unfinished).is_dir()  # reading never deletes anything

    # Resume up to the epoch whose save was killed, so the run saves that step again. This
    # part runs in this process: nothing here depends on being a separate process.
    code, _, err = run_main(train.main, [*flags[:-2], "--epochs", str(epochs_done + 1),
                                         "--resume"])
    assert code == 0, err
    assert "Traceback" not in err
    assert " ERROR " not in err
    assert (f"removing {directory / unfinished}: a save that never finished, left by a process "
            "that stopped during it") in err
    assert (f"resumed from {directory} at step {previous} (epoch {epochs_done + 1}, batch 0)"
            in err)

    assert checkpoint.unfinished_saves(directory) == []
    final = pretrained.load(directory, which="latest")
    assert final.step == killed_step
    assert final.meta["finished"] is True
    assert [record["epoch"] for record in final.meta["history"]] == list(
        range(1, epochs_done + 2))
