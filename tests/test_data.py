import hashlib

import numpy as np
import pytest

from model import data
from model.data import CorpusError, Vocab, build_corpus, preprocess, split_ids
from tests.conftest import SHARED_TIME_MACHINE


def test_preprocess_d2l_keeps_letters_and_single_spaces():
    assert preprocess("The Time-Traveller, 1895!\n\nHe said", "d2l") == "the time traveller he said"


def test_preprocess_raw_keeps_everything():
    text = "Ünïcode — emoji 🙂\nNew line"
    assert preprocess(text, "raw") == text


def test_vocab_is_sorted_and_deterministic():
    first = Vocab.from_text("hello world")
    second = Vocab.from_text("world hello")
    assert first.chars == second.chars
    assert list(first.chars) == sorted(set("hello world"))


def test_vocab_round_trip():
    vocab = Vocab.from_text("the time machine")
    ids = vocab.encode("time the")
    assert ids.dtype == np.int32
    assert vocab.decode(ids) == "time the"


def test_vocab_has_no_unk_and_reports_unknown():
    vocab = Vocab.from_text("abc ")
    assert "<unk>" not in vocab.chars
    assert vocab.unknown("abzz!") == "z!"
    with pytest.raises(ValueError, match="'z' is not in the vocabulary"):
        vocab.encode("az")


def test_full_split_is_contiguous_90_5_5():
    ids = np.arange(1000, dtype=np.int32)
    train, val, test = split_ids(ids, "full", num_steps=32)
    assert (len(train), len(val), len(test)) == (900, 50, 50)
    assert np.array_equal(np.concatenate([train, val, test]), ids)


def test_d2l_split_matches_the_book_windows():
    ids = np.arange(20_000, dtype=np.int32)
    train, val, test = split_ids(ids, "d2l", num_steps=32)
    # Training windows start at 0..9999, validation windows at 10000..14999.
    assert len(train) == 10_000 + 32
    assert train[0] == 0
    assert train[-1] == 9_999 + 32
    assert len(val) == 5_000 + 32
    assert val[0] == 10_000
    assert val[-1] == 14_999 + 32
    assert len(test) == 0


def test_d2l_split_rejects_short_corpus():
    with pytest.raises(CorpusError, match="use --split full"):
        split_ids(np.zeros(100, np.int32), "d2l", num_steps=32)


def test_build_corpus_with_foreign_vocab_drops_unknown():
    vocab = Vocab.from_text("ab ")
    corpus = build_corpus("abc abc " * 100, "raw", "full", 4, vocab=vocab)
    assert corpus.vocab is vocab
    assert len(np.concatenate([corpus.train, corpus.val, corpus.test])) == 600


def test_find_corpus_uses_cache(tmp_path):
    cached = tmp_path / "timemachine.txt"
    cached.write_text("cached text")
    assert data.find_corpus(None, tmp_path) == cached


def test_find_corpus_offline_message(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(data.urllib.request, "urlopen", refuse)
    with pytest.raises(CorpusError, match="--data PATH"):
        data.find_corpus(None, tmp_path / "empty-cache")
    assert not (tmp_path / "empty-cache" / "timemachine.txt").exists()


def test_download_rejects_wrong_checksum(tmp_path, monkeypatch):
    class Response:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return b"not the book"

    monkeypatch.setattr(data.urllib.request, "urlopen", lambda *a, **k: Response())
    with pytest.raises(CorpusError, match="sha1"):
        data.download_time_machine(tmp_path / "timemachine.txt")
    assert not (tmp_path / "timemachine.txt").exists()


@pytest.mark.parametrize("content, message", [
    (b"", "empty"), (b"   \n", "empty"), (b"ab\x00cd", "binary"), (b"caf\xe9", "UTF-8")])
def test_read_corpus_rejects_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=message):
        data.read_corpus(path)


def test_missing_corpus_file_is_named(tmp_path):
    with pytest.raises(CorpusError, match="not found"):
        data.find_corpus(tmp_path / "nope.txt")


@pytest.mark.skipif(not SHARED_TIME_MACHINE.is_file(), reason="shared Time Machine not present")
def test_shared_time_machine_checksum_and_vocab():
    assert data.sha1_of(SHARED_TIME_MACHINE) == data.TIME_MACHINE_SHA1
    corpus = build_corpus(data.read_corpus(SHARED_TIME_MACHINE), "d2l", "full", 32)
    assert "".join(corpus.vocab.chars) == " abcdefghijklmnopqrstuvwxyz"
