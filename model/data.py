"""Corpus loading, preprocessing, the character vocabulary and the splits.

The vocabulary has no `<unk>` token. Characters outside it are removed from a
prefix before the model reads it (and the caller gets the removed ones back), so
generated text can only ever contain characters that were in the training text.
"""

import dataclasses
import hashlib
import logging
import os
import pathlib
import re
import urllib.error
import urllib.request

import numpy as np

log = logging.getLogger(__name__)

TIME_MACHINE_URL = "http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt"
TIME_MACHINE_SHA1 = "090b5e7e70c295757f55df93cb0a180b9691891a"
DEFAULT_CACHE_DIR = pathlib.Path(
    os.environ.get("CONCISE_RNN_CACHE", pathlib.Path.home() / ".cache" / "concise_rnn"))
D2L_NUM_TRAIN = 10_000  # the book's training windows start at 0..9999
D2L_NUM_VAL = 5_000  # and its validation windows at 10000..14999


class CorpusError(Exception):
    """A corpus that is missing, unreadable or unusable, with the fix in the message."""


def sha1_of(path: pathlib.Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_time_machine(target: pathlib.Path, timeout: float = 30.0) -> pathlib.Path:
    """Download the Time Machine to `target` and verify its sha1."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    log.info("downloading %s to %s", TIME_MACHINE_URL, target)
    try:
        with urllib.request.urlopen(TIME_MACHINE_URL, timeout=timeout) as response:
            partial.write_bytes(response.read())
    except (urllib.error.URLError, OSError) as error:
        partial.unlink(missing_ok=True)
        raise CorpusError(
            f"could not download the Time Machine from {TIME_MACHINE_URL} ({error}). "
            f"Pass a local copy with --data PATH, or place it at {target}") from error
    actual = sha1_of(partial)
    if actual != TIME_MACHINE_SHA1:
        partial.unlink(missing_ok=True)
        raise CorpusError(
            f"downloaded file has sha1 {actual}, expected {TIME_MACHINE_SHA1}; "
            "nothing was saved. Pass a local copy with --data PATH")
    partial.replace(target)
    return target


def find_corpus(path: str | os.PathLike | None = None,
                data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Return the corpus file: `path` if given, else the cached Time Machine, else download it."""
    if path is not None:
        path = pathlib.Path(path).expanduser()
        if not path.is_file():
            raise CorpusError(f"corpus file not found: {path}")
        return path
    cache = pathlib.Path(data_dir).expanduser() if data_dir else DEFAULT_CACHE_DIR
    cached = cache / "timemachine.txt"
    if cached.is_file():
        return cached
    return download_time_machine(cached)


def read_corpus(path: pathlib.Path) -> str:
    """Read a UTF-8 text file, rejecting binary and empty files with a clear message."""
    raw = path.read_bytes()
    if not raw.strip():
        raise CorpusError(f"corpus file is empty: {path}")
    if b"\x00" in raw[:1 << 16]:
        raise CorpusError(f"corpus file looks binary (it contains NUL bytes): {path}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CorpusError(
            f"corpus file is not valid UTF-8 ({error.reason} at byte {error.start}): {path}. "
            "Convert it, e.g. with `iconv -f latin1 -t utf-8`") from error


def preprocess(text: str, mode: str) -> str:
    """Normalize text: `d2l` keeps lowercase letters and single spaces; `raw` keeps everything."""
    if mode == "d2l":
        return re.sub("[^A-Za-z]+", " ", text).lower()
    if mode == "raw":
        return text
    raise ValueError(f"unknown preprocessing mode {mode!r}; expected 'd2l' or 'raw'")


@dataclasses.dataclass(frozen=True)
class Vocab:
    """A sorted character vocabulary: index i is the i-th smallest code point."""

    chars: tuple[str, ...]

    @classmethod
    def from_text(cls, text: str) -> "Vocab":
        return cls(tuple(sorted(set(text))))

    def __post_init__(self):
        object.__setattr__(self, "_index", {char: i for i, char in enumerate(self.chars)})

    def __len__(self) -> int:
        return len(self.chars)

    def __contains__(self, char: str) -> bool:
        return char in self._index

    def encode(self, text: str) -> np.ndarray:
        """Map text to int32 ids (len(text),); raises KeyError-free ValueError on unknown characters."""
        try:
            return np.fromiter((self._index[char] for char in text), np.int32, len(text))
        except KeyError as error:
            raise ValueError(f"character {error.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def unknown(self, text: str) -> str:
        """Return the distinct characters of `text` that are not in the vocabulary, in order."""
        return "".join(dict.fromkeys(char for char in text if char not in self._index))

    def boundary_char(self) -> str:
        """Return the character that marks a fresh start: newline, else space, else the first one."""
        for char in ("\n", " "):
            if char in self._index:
                return char
        return self.chars[0]


@dataclasses.dataclass(frozen=True)
class Corpus:
    """A preprocessed corpus split into train / validation / test id arrays."""

    vocab: Vocab
    train: np.ndarray  # int32 (N_train,)
    val: np.ndarray  # int32 (N_val,)
    test: np.ndarray  # int32 (N_test,)
    split: str


def full_split_sizes(num_chars: int) -> tuple[int, int]:
    """Return (train, validation) lengths of the `full` split; the test part is the rest."""
    return int(num_chars * 0.9), int(num_chars * 0.05)


def split_ids(ids: np.ndarray, split: str, num_steps: int) -> tuple[np.ndarray, ...]:
    """Split an id stream into (train, val, test) parts.

    `full`: contiguous 90% / 5% / 5%. `d2l`: the book's split, where training windows
    of num_steps + 1 characters start at 0..9999 and validation windows at
    10000..14999. The parts returned are the character spans those windows cover,
    which overlap by num_steps characters as in the book, and test is empty.
    """
    if split == "full":
        num_train, num_val = full_split_sizes(len(ids))
        return ids[:num_train], ids[num_train:num_train + num_val], ids[num_train + num_val:]
    if split == "d2l":
        needed = D2L_NUM_TRAIN + D2L_NUM_VAL + num_steps
        if len(ids) < needed:
            raise CorpusError(
                f"the d2l split needs at least {needed} characters, the corpus has {len(ids)}; "
                "use --split full")
        train = ids[:D2L_NUM_TRAIN + num_steps]
        val = ids[D2L_NUM_TRAIN:D2L_NUM_TRAIN + D2L_NUM_VAL + num_steps]
        return train, val, ids[:0]
    raise ValueError(f"unknown split {split!r}; expected 'full' or 'd2l'")


def build_corpus(text: str, preprocess_mode: str, split: str, num_steps: int,
                 vocab: Vocab | None = None) -> Corpus:
    """Preprocess `text`, build (or reuse) the vocabulary, encode and split it."""
    text = preprocess(text, preprocess_mode)
    if len(text.strip()) < 2:
        raise CorpusError(
            f"the corpus has {len(text)} characters after {preprocess_mode} preprocessing, "
            "which keeps only letters and spaces; use --preprocess raw or another file"
            if preprocess_mode == "d2l" else
            f"the corpus has {len(text)} characters; at least 2 are needed")
    if vocab is None:
        vocab = Vocab.from_text(text)
    else:
        missing = vocab.unknown(text)
        if missing:
            log.warning("dropping %d character kinds not in the checkpoint's vocabulary: %r",
                        len(missing), missing[:40])
            text = "".join(char for char in text if char in vocab)
    ids = vocab.encode(text)
    train, val, test = split_ids(ids, split, num_steps)
    return Corpus(vocab=vocab, train=train, val=val, test=test, split=split)
