"""Encode a corpus once, in a streaming pass, into a memory-mapped token file.

    python -m model.prepare --data big.txt --out data/big            # raw by default
    python train.py --prepared data/big --checkpoint-dir runs/big

The output folder holds `ids.bin` (one unsigned integer per character, the
smallest type that fits the vocabulary) and `meta.json` (vocabulary, dtype,
character count, preprocessing mode, source file and the `full` split's
boundaries). The corpus is read twice in blocks of `--block-mb`: once to find
the vocabulary, once to encode. Neither pass holds more than one block, so
memory stays flat however large the file is. Training memory-maps `ids.bin`
and gathers only the windows of the batches it is about to use.

Preprocessing and splits mean what they mean for an in-memory corpus: the
prepared ids equal `Vocab.encode(preprocess(text))` exactly.
"""

import argparse
import codecs
import json
import logging
import pathlib
import re
import shutil
import sys
import time

import numpy as np
from tqdm.auto import tqdm

from model.config import PREPROCESS_MODES
from model.data import Corpus, CorpusError, Vocab, full_split_sizes, split_ids

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
IDS_FILE = "ids.bin"
META_FILE = "meta.json"
DEFAULT_BLOCK_MB = 1.0
_NON_LETTERS = re.compile("[^A-Za-z]+")


class StreamingPreprocessor:
    """Apply a preprocessing mode block by block, with the same result as on the whole text.

    `d2l` turns each run of non-letters into one space. A run that spans two
    blocks would give two spaces, so a space that follows one ending the
    previous block is dropped. (Letters never become spaces, so two spaces in a
    row can only come from such a split run.)
    """

    def __init__(self, mode: str):
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"unknown preprocessing mode {mode!r}; expected one of "
                             f"{PREPROCESS_MODES}")
        self.mode = mode
        self.ends_with_space = False

    def __call__(self, text: str) -> str:
        if self.mode == "raw" or not text:
            return text
        out = _NON_LETTERS.sub(" ", text).lower()
        if self.ends_with_space and out.startswith(" "):
            out = out[1:]
        if out:
            self.ends_with_space = out.endswith(" ")
        return out


def read_blocks(path: pathlib.Path, block_bytes: int, progress: bool, desc: str):
    """Yield the decoded text of `path` in blocks, rejecting binary and non-UTF-8 files."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    offset = 0
    size = path.stat().st_size
    with open(path, "rb") as stream, tqdm(total=size, unit="B", unit_scale=True, desc=desc,
                                          disable=not progress, leave=False) as bar:
        while True:
            raw = stream.read(block_bytes)
            if offset == 0 and b"\x00" in raw[:1 << 16]:
                raise CorpusError(f"corpus file looks binary (it contains NUL bytes): {path}")
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as error:
                raise CorpusError(
                    f"corpus file is not valid UTF-8 ({error.reason} near byte "
                    f"{offset + max(error.start, 0)}): {path}. Convert it, e.g. with "
                    "`iconv -f latin1 -t utf-8`") from error
            offset += len(raw)
            bar.update(len(raw))
            if text:
                yield text
            if not raw:
                return


def scan_vocabulary(path: pathlib.Path, mode: str, block_bytes: int,
                    progress: bool) -> tuple[Vocab, int]:
    """First pass: return the vocabulary of the preprocessed text and its length in characters."""
    chars, num_chars, has_text = set(), 0, False
    preprocess = StreamingPreprocessor(mode)
    for text in read_blocks(path, block_bytes, progress, "pass 1/2 (vocabulary)"):
        has_text = has_text or not text.isspace()
        text = preprocess(text)
        chars.update(text)
        num_chars += len(text)
    if not has_text:
        raise CorpusError(f"corpus file is empty: {path}")
    if num_chars < 2:
        raise CorpusError(f"the corpus has {num_chars} characters after {mode} preprocessing; "
                          "at least 2 are needed")
    return Vocab(tuple(sorted(chars))), num_chars


def ids_dtype(vocab_size: int) -> np.dtype:
    """Return the smallest unsigned type that fits every id."""
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


class BlockEncoder:
    """Map text to ids with NumPy: a lookup table for ASCII blocks, a sorted search otherwise."""

    def __init__(self, vocab: Vocab, dtype: np.dtype):
        self.dtype = dtype
        self.code_points = np.array([ord(char) for char in vocab.chars], np.uint32)  # sorted
        self.ascii_table = np.zeros(128, dtype)
        for i, point in enumerate(self.code_points):
            if point < 128:
                self.ascii_table[point] = i

    def __call__(self, text: str) -> np.ndarray:
        if text.isascii():
            points = np.frombuffer(text.encode("ascii"), np.uint8)  # (n,)
            return self.ascii_table[points]
        points = np.frombuffer(text.encode("utf-32-le"), np.uint32)  # (n,)
        return np.searchsorted(self.code_points, points).astype(self.dtype)


def prepare(path, out, mode: str = "raw", block_mb: float = DEFAULT_BLOCK_MB,
            progress: bool = True, overwrite: bool = False) -> dict:
    """Encode the corpus at `path` into the folder `out`; return the metadata written."""
    path = pathlib.Path(path).expanduser().resolve()
    out = pathlib.Path(out).expanduser().resolve()
    if path.is_dir():
        raise CorpusError(f"--data {path} is a folder; pass the text file itself")
    if not path.is_file():
        raise CorpusError(f"corpus file not found: {path}")
    if out.exists() and not out.is_dir():
        raise CorpusError(f"--out {out} is a file; choose a folder (it is created if missing)")
    if out == path.parent or out in path.parents:
        raise CorpusError(f"--out {out} contains the corpus {path}; choose another folder")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise CorpusError(f"--out {out} already exists and is not empty; choose another "
                              "folder or pass --overwrite")
        shutil.rmtree(out)
    if block_mb <= 0:
        raise ValueError(f"--block-mb must be positive, got {block_mb}")
    block_bytes = max(1, int(block_mb * (1 << 20)))
    started = time.perf_counter()

    vocab, num_chars = scan_vocabulary(path, mode, block_bytes, progress)
    dtype = ids_dtype(len(vocab))
    encode, preprocess = BlockEncoder(vocab, dtype), StreamingPreprocessor(mode)
    out.mkdir(parents=True, exist_ok=True)
    partial = out / (IDS_FILE + ".part")
    written = 0
    # Plain sequential writes: a writable memory map would keep every page it
    # touched resident until the end.
    with open(partial, "wb") as sink:
        for text in read_blocks(path, block_bytes, progress, "pass 2/2 (encoding)"):
            ids = encode(preprocess(text))  # (n,) dtype
            sink.write(ids.tobytes())
            written += len(ids)
    if written != num_chars:  # the file changed between the passes
        partial.unlink()
        raise CorpusError(f"{path} changed while it was being prepared; run the command again")
    partial.replace(out / IDS_FILE)

    num_train, num_val = full_split_sizes(num_chars)
    meta = {"format_version": FORMAT_VERSION, "source": str(path),
            "source_bytes": path.stat().st_size, "preprocess": mode, "vocab": list(vocab.chars),
            "num_chars": num_chars, "dtype": dtype.name,
            "splits": {"full": {"train": [0, num_train], "val": [num_train, num_train + num_val],
                                "test": [num_train + num_val, num_chars]}}}
    (out / META_FILE).write_text(json.dumps(meta, ensure_ascii=False, indent=1),
                                 encoding="utf-8")
    seconds = time.perf_counter() - started
    meta["seconds"] = seconds
    log.info("prepared %s: %s characters, vocabulary %d, %s ids in %s (%.1f MB/s)", path.name,
             f"{num_chars:,}", len(vocab), dtype.name, out,
             meta["source_bytes"] / max(seconds, 1e-9) / 1e6)
    return meta


def read_meta(directory) -> dict:
    """Return the metadata of a prepared folder, or raise CorpusError naming what is wrong."""
    directory = pathlib.Path(directory).expanduser().resolve()
    meta_file = directory / META_FILE
    if not meta_file.is_file() or not (directory / IDS_FILE).is_file():
        raise CorpusError(f"{directory} is not a prepared corpus (it needs {META_FILE} and "
                          f"{IDS_FILE}); create it with `python -m model.prepare --data FILE "
                          f"--out {directory}`")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        expected = meta["num_chars"] * np.dtype(meta["dtype"]).itemsize
        missing = [key for key in ("vocab", "preprocess") if key not in meta]
        if missing:
            raise KeyError(", ".join(missing))
    except (ValueError, KeyError, TypeError) as error:
        raise CorpusError(f"{meta_file} is damaged ({error}); prepare the corpus again") from error
    actual = (directory / IDS_FILE).stat().st_size
    if actual != expected:
        raise CorpusError(f"{directory / IDS_FILE} has {actual} bytes, {expected} expected; "
                          "prepare the corpus again")
    return meta


def load_prepared(directory, split: str, num_steps: int) -> Corpus:
    """Open a prepared folder as a Corpus whose id arrays are read-only memory maps."""
    directory = pathlib.Path(directory).expanduser().resolve()
    meta = read_meta(directory)
    ids = np.memmap(directory / IDS_FILE, dtype=np.dtype(meta["dtype"]), mode="r",
                    shape=(meta["num_chars"],))  # (N,)
    train, val, test = split_ids(ids, split, num_steps)
    return Corpus(vocab=Vocab(tuple(meta["vocab"])), train=train, val=val, test=test,
                  split=split)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model.prepare",
        description="Encode a UTF-8 corpus once into a memory-mapped token file that "
                    "`train.py --prepared DIR` trains from without loading it into memory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # SUPPRESS keeps "(default: None)" out of the help of the two required flags.
    parser.add_argument("--data", required=True, default=argparse.SUPPRESS,
                        help="UTF-8 text file to encode")
    parser.add_argument("--out", required=True, default=argparse.SUPPRESS,
                        help="folder to write ids.bin and meta.json to (created if missing)")
    parser.add_argument("--preprocess", choices=PREPROCESS_MODES, default="raw",
                        help="raw keeps every character; d2l keeps lowercase letters and "
                             "single spaces, as the book does")
    parser.add_argument("--block-mb", type=float, default=DEFAULT_BLOCK_MB,
                        help="size of each block read from the file, in MiB (sets peak memory)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the contents of a non-empty --out folder")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", force=True)
    try:
        prepare(args.data, args.out, args.preprocess, args.block_mb,
                progress=not args.no_progress, overwrite=args.overwrite)
    except CorpusError as error:
        log.error("%s", error)
        return 1
    except ValueError as error:
        log.error("invalid setting: %s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
