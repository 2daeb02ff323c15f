"""Shared fixtures: a small corpus (the real Time Machine when ../shared/data has it)."""

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_TIME_MACHINE = ROOT.parent / "shared" / "data" / "timemachine.txt"


def make_text(num_chars: int = 20_000) -> str:
    """Deterministic English-like text for machines without the shared corpora."""
    words = ("the time traveller said that he had seen the future and it was strange "
             "we sat and listened while the lamp burned low in the room").split()
    out, i = [], 0
    while sum(len(w) + 1 for w in out) < num_chars:
        out.append(words[(i * 7 + i // 3) % len(words)])
        i += 1
    return " ".join(out)[:num_chars]


@pytest.fixture(scope="session")
def corpus_text() -> str:
    """About 20,000 characters of book text (or generated text when the book is absent)."""
    if SHARED_TIME_MACHINE.is_file():
        return SHARED_TIME_MACHINE.read_text(encoding="utf-8")[:20_000]
    return make_text()


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory, corpus_text) -> pathlib.Path:
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(corpus_text, encoding="utf-8")
    return path
