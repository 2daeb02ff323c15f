"""`python -m model.prepare`: streamed encoding that equals the in-memory path, in flat memory."""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from model import prepare
from model.config import ModelConfig, TrainConfig
from model.data import CorpusError, Vocab, build_corpus, preprocess
from model.pretrained import load
from model.trainer import fit

PROJECT = pathlib.Path(__file__).resolve().parents[1]
# Multi-byte characters, runs of punctuation and newlines, so small blocks split
# both UTF-8 sequences and the runs that d2l preprocessing collapses.
MIXED = ("First Citizen:\nBefore we proceed any further, hear me speak!\n\n"
         "ALL:\tSpeak, speak... — «café», naïve Ωmega; 東京 🙂 end.\n") * 40


@pytest.mark.parametrize("mode", ["raw", "d2l"])
@pytest.mark.parametrize("block_mb", [7 / (1 << 20), 1.0])  # 7-byte blocks, then one block
def test_prepared_ids_equal_the_in_memory_encoding(tmp_path, mode, block_mb):
    source = tmp_path / "mixed.txt"
    source.write_text(MIXED, encoding="utf-8")
    meta = prepare.prepare(source, tmp_path / "out", mode, block_mb, progress=False)

    text = preprocess(MIXED, mode)
    vocab = Vocab.from_text(text)
    ids = np.fromfile(tmp_path / "out" / prepare.IDS_FILE, dtype=meta["dtype"])
    assert meta["vocab"] == list(vocab.chars)
    assert meta["num_chars"] == len(text)
    assert np.array_equal(ids, vocab.encode(text))


def test_splits_of_a_prepared_corpus_equal_the_in_memory_splits(tmp_path, corpus_text):
    source = tmp_path / "book.txt"
    source.write_text(corpus_text, encoding="utf-8")
    prepare.prepare(source, tmp_path / "out", "d2l", progress=False)
    for split in ("full", "d2l"):
        if split == "d2l" and len(preprocess(corpus_text, "d2l")) < 15_100:
            continue
        mapped = prepare.load_prepared(tmp_path / "out", split, 32)
        loaded = build_corpus(corpus_text, "d2l", split, 32)
        assert isinstance(mapped.train, np.memmap)
        for part in ("train", "val", "test"):
            assert np.array_equal(getattr(mapped, part), getattr(loaded, part)), (split, part)
        assert mapped.vocab == loaded.vocab


def test_training_from_a_prepared_corpus_matches_the_in_memory_path(tmp_path, corpus_text):
    source = tmp_path / "book.txt"
    source.write_text(corpus_text, encoding="utf-8")
    prepare.prepare(source, tmp_path / "out", "raw", progress=False)
    train_config = TrainConfig(batch_size=4, num_steps=16, epochs=1, steps_per_call=4,
                               preprocess="raw", sample_every=0, batching="random")
    mapped = prepare.load_prepared(tmp_path / "out", "full", 16)
    loaded = build_corpus(corpus_text, "raw", "full", 16)
    model_config = ModelConfig(vocab_size=len(loaded.vocab), cell="gru", num_hiddens=16,
                               dropout=0.1)
    # The same steps on a prefix of the corpus, so the test stays short.
    results = [fit(model_config, train_config,
                   corpus.__class__(vocab=corpus.vocab, train=corpus.train[:3_000],
                                    val=corpus.val[:500], test=corpus.test, split="full"),
                   progress=False, devices=1)
               for corpus in (mapped, loaded)]
    for left, right in zip(jax.tree_util.tree_leaves(results[0].state.params),
                           jax.tree_util.tree_leaves(results[1].state.params)):
        np.testing.assert_array_equal(np.asarray(left), np.asarray(right))
    assert results[0].history[0]["val_perplexity"] == results[1].history[0]["val_perplexity"]


def write_large_corpus(path: pathlib.Path, num_bytes: int) -> None:
    """Write `num_bytes` of varied ASCII text in 1 MiB pieces."""
    rng = np.random.default_rng(0)
    words = np.array("the time traveller machine said we it was a of and to in that his "
                     "hand ROMEO: JULIET: ,.;!?\n".split(" "))
    with open(path, "w", encoding="ascii") as sink:
        written = 0
        while written < num_bytes:
            piece = " ".join(rng.choice(words, 200_000))[:min(1 << 20, num_bytes - written)]
            sink.write(piece)
            written += len(piece)


def test_prepare_keeps_peak_memory_far_below_a_96_mb_corpus(tmp_path):
    source = tmp_path / "large.txt"
    corpus_bytes = 96 << 20
    write_large_corpus(source, corpus_bytes)
    # A wrapper process reports the peak resident memory of its only child.
    wrapper = ("import resource, subprocess, sys\n"
               "code = subprocess.call([sys.executable, '-m', 'model.prepare'] + sys.argv[1:])\n"
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
               "sys.exit(code)\n")
    result = subprocess.run(
        [sys.executable, "-c", wrapper, "--data", str(source), "--out", str(tmp_path / "out"),
         "--no-progress"], cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    peak_bytes = int(result.stdout.split()[-1]) * 1024  # ru_maxrss is in KiB on Linux
    # About 38 MiB of it is the interpreter with NumPy; the blocks add a few MiB.
    assert peak_bytes < corpus_bytes * 0.6, f"peak RSS {peak_bytes / 2**20:.0f} MiB"
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["num_chars"] == corpus_bytes
    assert (tmp_path / "out" / "ids.bin").stat().st_size == corpus_bytes  # uint8 ids


@pytest.mark.parametrize("content, message", [
    (None, "corpus file not found"),
    (b"", "corpus file is empty"),
    (b" \n\t ", "corpus file is empty"),
    (b"abc\x00def", "looks binary"),
    (b"caf\xe9 au lait", "not valid UTF-8"),
    (b"a", "at least 2 are needed"),
])
def test_prepare_rejects_unusable_corpora_with_one_message(tmp_path, capsys, content, message):
    source = tmp_path / "corpus.txt"
    if content is not None:
        source.write_bytes(content)
    code = prepare.main(["--data", str(source), "--out", str(tmp_path / "out"),
                         "--no-progress"])
    assert code == 1
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, stderr
    assert message in errors[0]
    assert "Traceback" not in stderr
    assert not (tmp_path / "out" / prepare.IDS_FILE).exists()


def test_prepare_refuses_a_non_empty_output_folder(tmp_path):
    source = tmp_path / "corpus.txt"
    source.write_text("hello world", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(CorpusError, match="--out .* not empty; choose another folder or pass "
                                          "--overwrite"):
        prepare.prepare(source, out, progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    prepare.prepare(source, out, progress=False, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert (out / prepare.IDS_FILE).is_file()


def test_load_prepared_names_a_damaged_folder(tmp_path):
    source = tmp_path / "corpus.txt"
    source.write_text("hello world, hello again", encoding="utf-8")
    out = tmp_path / "out"
    prepare.prepare(source, out, progress=False)
    with open(out / prepare.IDS_FILE, "r+b") as stream:
        stream.truncate(5)
    with pytest.raises(CorpusError, match="ids.bin has 5 bytes, 24 expected"):
        prepare.load_prepared(out, "full", 4)
    with pytest.raises(CorpusError, match="is not a prepared corpus"):
        prepare.load_prepared(tmp_path / "missing", "full", 4)


def test_train_cli_trains_from_a_prepared_folder(tmp_path, corpus_text, capsys):
    import train

    source = tmp_path / "book.txt"
    source.write_text(corpus_text[:6_000], encoding="utf-8")
    out = tmp_path / "prepared"
    prepare.prepare(source, out, "raw", progress=False)
    tiny = ["--num-hiddens", "8", "--num-layers", "1", "--epochs", "1", "--batch-size", "4",
            "--num-steps", "16", "--no-progress", "--checkpoint-dir", str(tmp_path / "run")]

    assert train.main(["--prepared", str(out), "--preprocess", "d2l"] + tiny) == 2
    assert ("--preprocess d2l differs from the prepared corpus's mode 'raw'; leave --preprocess "
            "out or prepare it again") in capsys.readouterr().err
    assert train.main(["--prepared", str(out), "--data", str(source)] + tiny) == 2
    assert "pass either --data or --prepared, not both" in capsys.readouterr().err

    assert train.main(["--prepared", str(out)] + tiny) == 0
    assert "memory-mapped" in capsys.readouterr().err
    trained = load(tmp_path / "run")
    assert trained.preprocess == "raw"
    assert list(trained.vocab.chars) == json.loads((out / "meta.json").read_text())["vocab"]


def test_prepare_never_deletes_its_input_or_a_file(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    source = folder / "corpus.txt"
    source.write_text("hello world, hello again", encoding="utf-8")
    with pytest.raises(CorpusError, match="contains the corpus"):
        prepare.prepare(source, folder, progress=False, overwrite=True)
    with pytest.raises(CorpusError, match="is a file; choose a folder"):
        prepare.prepare(source, source, progress=False, overwrite=True)
    with pytest.raises(CorpusError, match="is a folder; pass the text file itself"):
        prepare.prepare(folder, tmp_path / "out", progress=False)
    assert source.read_text(encoding="utf-8") == "hello world, hello again"
