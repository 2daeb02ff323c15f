"""Web app: compare untrained and trained character-level RNN, GRU and LSTM language models.

    python app.py                                   # http://127.0.0.1:7860
    GRADIO_SERVER_PORT=7861 python app.py --checkpoint-root runs
    GRADIO_SERVER_NAME=0.0.0.0 python app.py        # listen on every interface

Tabs: Generate, Next character, Training curves, Score your text, Train live.
`import app` defines functions only. `main()` loads every checkpoint under the
checkpoint root once, compiles the sampling and scoring functions, and
launches the server. The handlers take a `Models` value first, so tests call
them directly.

Shapes: N = characters, V = vocab_size.
"""

import argparse
import dataclasses
import html
import logging
import math
import numbers
import os
import pathlib
import time
from typing import Iterator

# The app sends no usage statistics unless GRADIO_ANALYTICS_ENABLED=True is set.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402  (after the environment default)
import matplotlib  # noqa: E402
import numpy as np
import pandas as pd

from model import checkpoint
from model.app_support import LiveUpdate, char_log_probs, generate, next_char_logits, train_live
from model.config import ModelConfig, TrainConfig
from model.data import CorpusError, build_corpus, find_corpus, preprocess, read_corpus
from model.evaluate import read_scores
from model.pretrained import Pretrained, load
from model.rnn import count_params
from model.sampling import PreparedPrefix, Sample, prepare_prefix

matplotlib.use("Agg")  # no display; figures are rendered to images for the page
from matplotlib import ticker  # noqa: E402  (after choosing the backend)
from matplotlib.figure import Figure  # noqa: E402

log = logging.getLogger("app")

ROOT = pathlib.Path(__file__).resolve().parent
CHECKPOINT_ENV = "CONCISE_RNN_CHECKPOINTS"
CELL_LABELS = {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}

# Limits that every request is checked against, whatever the sliders allow.
DEFAULT_PREFIX = "the time traveller"
MAX_PREFIX_CHARS = 2_000  # longer prefixes keep their last MAX_PREFIX_CHARS characters
MAX_CHARS = 1_000  # generated characters per request
MAX_TEMPERATURE = 2.0
MAX_TOP_K = 100
MAX_SEED = 2**32 - 1
MAX_SCORE_CHARS = 10_000  # longer texts are scored on their first MAX_SCORE_CHARS characters
SHOWN_PREFIX_CHARS = 300  # the panels show at most this many prefix characters

# Reveal speeds in characters per second. None shows the whole text at once.
SPEEDS = {"slow (10 chars/s)": 10, "reading (30 chars/s)": 30, "fast (100 chars/s)": 100,
          "instant": None}
DEFAULT_SPEED = "reading (30 chars/s)"
UPDATES_PER_SEC = 25  # page updates per second while revealing

# Live training bounds, chosen to finish in about a minute on 2 CPU cores.
LIVE_CELLS = ("rnn", "gru", "lstm")
LIVE_HIDDENS = (16, 128)
LIVE_EPOCHS = (1, 20)
LIVE_TIME_LIMIT = 60.0  # seconds, compilation included, after which a run stops
LIVE_TEXT_CHARS = (2_000, 300_000)  # min after preprocessing, max kept
LIVE_UPLOAD_BYTES = 1_000_000
LIVE_NUM_STEPS = 64
TIME_MACHINE = "The Time Machine"
MY_TEXT = "My text (pasted or uploaded)"

# Colour classes by the probability a model gave a character: p0 below 5% ... p4 from 80%.
PROBABILITY_BINS = (0.05, 0.2, 0.5, 0.8)
CSS = """
.prose.sample-text { white-space: pre-wrap; font-family: var(--font-mono); line-height: 1.7;
  min-height: 10em; max-height: 26em; overflow-y: auto; padding: 10px 12px;
  border: 1px solid var(--border-color-primary); border-radius: var(--radius-lg); }
.prose.sample-text .prefix { color: var(--body-text-color-subdued); font-style: italic; }
.p0, .p1, .p2, .p3, .p4, .pn { color: #111; border-radius: 2px; }
.p0 { background: #f4a582; } .p1 { background: #fddbc7; } .p2 { background: #f7f7f7; }
.p3 { background: #d1e5f0; } .p4 { background: #92c5de; } .pn { background: #dddddd; }
.legend span { padding: 1px 6px; margin-right: 4px; font-family: var(--font-mono); }
"""


def reject(message: str) -> gr.Error:
    """Log a rejected request and return the error to raise."""
    log.info("rejected request: %s", message)
    return gr.Error(message, print_exception=False)


# ---------------------------------------------------------------------------- loading


@dataclasses.dataclass(frozen=True)
class Entry:
    """One loaded checkpoint with the untrained network it started from."""

    name: str  # checkpoint directory name, which API callers pass as `cell`
    pretrained: Pretrained
    untrained_params: dict  # the same network at step 0
    history: tuple  # per-epoch records of the whole run, from the latest checkpoint
    latest_meta: dict

    @property
    def label(self) -> str:
        return CELL_LABELS.get(self.name, self.name)

    @property
    def config(self) -> ModelConfig:
        return self.pretrained.model_config


@dataclasses.dataclass(frozen=True)
class Models:
    """Every checkpoint the app serves, plus those that failed to load."""

    root: pathlib.Path
    entries: dict  # name -> Entry, in display order
    failures: dict  # name -> error message

    def choices(self) -> list[tuple[str, str]]:
        return [(entry.label, name) for name, entry in self.entries.items()]

    def default_name(self) -> str | None:
        return "lstm" if "lstm" in self.entries else next(iter(self.entries), None)


def checkpoint_root(flag: str | None) -> pathlib.Path:
    """Return the checkpoint root: the flag, else $CONCISE_RNN_CHECKPOINTS, else ./checkpoints."""
    value = flag or os.environ.get(CHECKPOINT_ENV)
    if not value:
        return ROOT / "checkpoints"
    path = pathlib.Path(value).expanduser()
    return path if path.is_absolute() else ROOT / path


def checkpoint_dirs(root: pathlib.Path) -> list[pathlib.Path]:
    """List the run directories under `root`: rnn, gru, lstm first, then the others by name."""
    if not root.is_dir():
        return []
    order = list(CELL_LABELS)
    dirs = [path for path in root.iterdir() if path.is_dir() and not path.name.startswith(".")
            and not path.name.endswith(".previous")]
    return sorted(dirs, key=lambda path: (order.index(path.name) if path.name in order
                                          else len(order), path.name))


def read_latest_meta(directory: pathlib.Path) -> dict:
    """Return the metadata of the latest checkpoint, whose history covers the whole run."""
    manager = checkpoint.open_manager(directory, read_only=True)
    try:
        return checkpoint.restore_meta(manager, checkpoint.choose_step(manager, "latest"))
    finally:
        manager.close()


def load_models(root: pathlib.Path) -> Models:
    """Load every checkpoint under `root`, logging each one that fails instead of stopping."""
    entries, failures = {}, {}
    for directory in checkpoint_dirs(root):
        try:
            pretrained = load(directory)
            latest = read_latest_meta(directory)
            entries[directory.name] = Entry(
                name=directory.name, pretrained=pretrained,
                untrained_params=pretrained.untrained_params(),
                history=tuple(latest.get("history", ())), latest_meta=latest)
        # Orbax and damaged metadata raise many exception types; one bad run must not stop the app.
        except Exception as error:  # noqa: BLE001
            failures[directory.name] = f"{type(error).__name__}: {error}"
            log.error("checkpoint %s failed to load: %s", directory.name, failures[directory.name])
            continue
        log.info("loaded %s: %s, step %d", directory.name, pretrained.model_config, pretrained.step)
    if not entries:
        log.warning("no checkpoint loaded from %s. Train one with `python train.py`", root)
    return Models(root=root, entries=entries, failures=failures)


def warm_up(models: Models) -> None:
    """Compile generation and scoring once per model config, before the first request.

    NOTE: only the shortest input bucket is compiled here. A prefix longer than
    64 characters or a longer scored text compiles its bucket on first use, in
    about 2 s on 2 shared CPU cores.
    """
    seen = set()
    for entry in models.entries.values():
        if entry.config in seen:
            continue
        seen.add(entry.config)
        started = time.perf_counter()
        pretrained = entry.pretrained
        generate(pretrained.params, entry.config, pretrained.vocab, pretrained.preprocess,
                 DEFAULT_PREFIX, MAX_CHARS, seed=0, temperature=1.0, top_k=0)
        ids = pretrained.vocab.encode(prepare_prefix(DEFAULT_PREFIX, pretrained.vocab,
                                                     pretrained.preprocess).primer)
        next_char_logits(pretrained.params, entry.config, ids)
        log.info("compiled %s in %.1f s", entry.name, time.perf_counter() - started)


# ---------------------------------------------------------------------------- input checks


def check_number(name: str, value, low: float, high: float, *, integer: bool) -> float:
    """Return `value` if it is a finite number in [low, high] (whole if `integer`), else raise."""
    kind = "whole number" if integer else "number"
    upper = str(int(high)) if integer else f"{high:g}"
    allowed = f"{name} must be a {kind} from {low:g} to {upper}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise reject(f"{allowed}, got {value!r}")
    if not math.isfinite(value) or not low <= value <= high or (integer and value != int(value)):
        raise reject(f"{allowed}, got {value!r}")
    return int(value) if integer else float(value)


def check_entry(models: Models, cell) -> Entry:
    """Return the checkpoint named `cell` (its directory name or label, any case)."""
    if not models.entries:
        raise reject(f"no trained checkpoint was loaded from {models.root}. Train one with "
                     "`python train.py` or point --checkpoint-root at a folder of runs")
    if isinstance(cell, str):
        requested = cell.strip().lower()
        for name, entry in models.entries.items():
            if requested in (name.lower(), entry.label.lower()):
                return entry
    available = ", ".join(models.entries)
    raise reject(f"unknown model {cell!r}. Choose one of: {available}")


def check_text(name: str, value) -> str:
    """Return a text input as a string. A cleared textbox sends None, which means empty."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise reject(f"{name} must be text, got {type(value).__name__} {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class GenerateRequest:
    """A checked generation request."""

    entry: Entry
    prefix: str  # at most MAX_PREFIX_CHARS characters, not yet normalized
    cut: int  # characters dropped from the start of a longer prefix
    num_chars: int
    temperature: float
    top_k: int
    seed: int


def check_generate(models: Models, cell, prefix, num_chars, temperature, top_k,
                   seed) -> GenerateRequest:
    """Check every generation input, because slider bounds do not bind API callers."""
    entry = check_entry(models, cell)
    prefix = check_text("prefix", prefix)
    cut = max(0, len(prefix) - MAX_PREFIX_CHARS)
    return GenerateRequest(
        entry=entry, prefix=prefix[cut:], cut=cut,
        num_chars=check_number("length", num_chars, 1, MAX_CHARS, integer=True),
        temperature=check_number("temperature", temperature, 0.0, MAX_TEMPERATURE,
                                 integer=False),
        top_k=check_number("top-k", top_k, 0, MAX_TOP_K, integer=True),
        seed=check_number("seed", seed, 0, MAX_SEED, integer=True))


# ---------------------------------------------------------------------------- generation


def run_generation(request: GenerateRequest) -> tuple[Sample, Sample]:
    """Sample from the untrained and the trained network with the same prefix, settings and seed.

    Both always generate MAX_CHARS characters (one compiled shape) and are cut
    to the requested length. Each step's key does not depend on the length, so
    a shorter request returns the start of a longer one.
    """
    pretrained = request.entry.pretrained
    samples = []
    for params in (request.entry.untrained_params, pretrained.params):
        full = generate(params, pretrained.model_config, pretrained.vocab, pretrained.preprocess,
                        request.prefix, MAX_CHARS, seed=request.seed,
                        temperature=request.temperature, top_k=request.top_k)
        samples.append(dataclasses.replace(full, text=full.text[:request.num_chars],
                                           log_probs=full.log_probs[:request.num_chars]))
    return samples[0], samples[1]


def describe_prefix(request: GenerateRequest, prepared: PreparedPrefix) -> str:
    """Explain, as HTML, how the prefix was changed before the models saw it ('' if unchanged)."""
    mode = request.entry.pretrained.preprocess
    notes = []
    if request.cut:
        notes.append(f"only its last {MAX_PREFIX_CHARS:,} characters were kept "
                     f"({request.cut:,} cut from the start)")
    if preprocess(request.prefix, mode) != request.prefix:
        notes.append("d2l preprocessing lowercased the letters and turned every run of other "
                     "characters (digits, punctuation, line breaks) into one space")
    if prepared.removed:
        listed = " ".join(repr(char) for char in prepared.removed[:20])
        notes.append("characters the model does not know were removed: "
                     + html.escape(listed, quote=False))
    if not prepared.text:
        notes.append("nothing is left, so the models start from a fresh line "
                     f"(they are primed with {prepared.primer!r})")
    if not notes:
        return ""
    return ("<b>The models saw the grey prefix in the panels, not your input:</b> "
            + "; ".join(notes) + ".")


def probability_class(log_prob: float) -> str:
    return f"p{int(np.searchsorted(PROBABILITY_BINS, math.exp(log_prob), side='right'))}"


def char_spans(text: str, log_probs: np.ndarray, colour: bool) -> list[str]:
    """Return one HTML fragment per character, coloured by its probability when `colour`."""
    if not colour:
        return [html.escape(char) for char in text]
    return [f'<span class="{probability_class(lp)}" title="p = {math.exp(lp):.1%}">'
            f"{html.escape(char)}</span>" for char, lp in zip(text, log_probs)]


def prefix_html(prefix_text: str) -> str:
    tail = prefix_text[-SHOWN_PREFIX_CHARS:]
    ellipsis = "…" if len(prefix_text) > len(tail) else ""
    return f'<span class="prefix">{ellipsis}{html.escape(tail)}</span>'


def text_stats(log_probs: np.ndarray) -> str:
    """Describe perplexity and bits per character of generated text from its log_probs (N,)."""
    if len(log_probs) == 0:
        return "perplexity – · bits per character –"
    mean_loss = -float(np.mean(log_probs))
    return (f"perplexity **{math.exp(mean_loss):.2f}** · **{mean_loss / math.log(2):.2f}** "
            f"bits per character on its own {len(log_probs):,} characters")


def panel_titles(entry: Entry) -> tuple[str, str]:
    epochs = len(entry.history)
    return (f"### Untrained {entry.label}\nthe same network at step 0, before any training",
            f"### Trained {entry.label}\nstep {entry.pretrained.step:,}, "
            f"{epochs} epoch{'s' if epochs != 1 else ''} of training")


def reveal_counts(num_chars: int, chars_per_sec: float | None) -> Iterator[int]:
    """Yield how many characters to show at each page update, at `chars_per_sec`."""
    if chars_per_sec is None:
        yield num_chars
        return
    started, num_shown = time.monotonic(), 0
    while num_shown < num_chars:
        time.sleep(1.0 / UPDATES_PER_SEC)
        due = int((time.monotonic() - started) * chars_per_sec)
        if due > num_shown:
            num_shown = min(num_chars, due)
            yield num_shown


def stream_generate(models: Models, cell, prefix, num_chars, temperature, top_k, seed,
                    speed, colour) -> Iterator[tuple]:
    """Yield (note, untrained title, untrained text, untrained stats, trained ...) updates.

    The text is sampled at once, and the panels reveal it at the chosen speed. Each
    panel's HTML only ever grows at its end, so Gradio streams it as appends.
    """
    if speed not in SPEEDS:
        raise reject(f"speed must be one of {list(SPEEDS)}, got {speed!r}")
    request = check_generate(models, cell, prefix, num_chars, temperature, top_k, seed)
    untrained, trained = run_generation(request)
    note = describe_prefix(request, trained.prefix)
    titles = panel_titles(request.entry)
    head = prefix_html(trained.prefix.text)
    spans = [char_spans(sample.text, sample.log_probs, bool(colour))
             for sample in (untrained, trained)]

    def update(num_shown: int) -> tuple:
        panels = []
        for title, sample, sample_spans in zip(titles, (untrained, trained), spans):
            panels += [title, head + "".join(sample_spans[:num_shown]),
                       text_stats(sample.log_probs[:num_shown])]
        return (note, *panels)

    yield update(0)
    for num_shown in reveal_counts(request.num_chars, SPEEDS[speed]):
        yield update(num_shown)


def generate_texts(models: Models, prefix: str | None = DEFAULT_PREFIX, cell: str = "lstm",
                   num_chars: int = 200, temperature: float = 1.0, top_k: int = 0,
                   seed: int = 0) -> tuple[str, str]:
    """Return the untrained and the trained text, each the prefix the model saw plus its continuation."""
    request = check_generate(models, cell, prefix, num_chars, temperature, top_k, seed)
    untrained, trained = run_generation(request)
    return (untrained.prefix.text + untrained.text, trained.prefix.text + trained.text)


# ---------------------------------------------------------------------------- next character


def visible_char(char: str) -> str:
    return {" ": "␣", "\n": "↵", "\t": "⇥"}.get(char, char)


def apply_sampling(logits: np.ndarray, temperature: float, top_k: int) -> np.ndarray:
    """Return the probabilities (V,) the sampler draws from after temperature and top-k."""
    if temperature == 0:
        probs = np.zeros_like(logits)
        probs[np.argmax(logits)] = 1.0
        return probs
    scaled = logits / temperature
    if 0 < top_k < len(scaled):
        kth_largest = np.sort(scaled)[-top_k]
        scaled = np.where(scaled < kth_largest, -np.inf, scaled)
    scaled = scaled - np.max(scaled)
    return np.exp(scaled) / np.sum(np.exp(scaled))


def next_char_table(models: Models, cell, prefix, temperature, top_k,
                    num_bars: int = 12) -> pd.DataFrame:
    """Tabulate both networks' most likely next characters, before and after temperature and top-k."""
    request = check_generate(models, cell, prefix, 1, temperature, top_k, 0)
    pretrained = request.entry.pretrained
    prepared = prepare_prefix(request.prefix, pretrained.vocab, pretrained.preprocess)
    ids = pretrained.vocab.encode(prepared.primer)  # (N,)
    rows = []
    for network, params in (("untrained", request.entry.untrained_params),
                            ("trained", pretrained.params)):
        logits = next_char_logits(params, pretrained.model_config, ids)  # (V,)
        plain = apply_sampling(logits, 1.0, 0)
        sampled = apply_sampling(logits, request.temperature, request.top_k)
        for index in np.argsort(-plain, kind="stable")[:num_bars]:
            rows.append({"network": network, "char": pretrained.vocab.chars[index],
                         "probability": float(plain[index]),
                         "after_settings": float(sampled[index])})
    return pd.DataFrame(rows)


def next_char_figure(table: pd.DataFrame, label: str, temperature: float, top_k: int,
                     seen: str) -> Figure:
    """Draw the untrained and trained next-character bars side by side.

    `seen` is the prefix as the models saw it, shown in the title.
    """
    figure = Figure(figsize=(11, 4), layout="constrained")
    axes = figure.subplots(1, 2, sharey=True)
    tail = seen[-40:]
    figure.suptitle(f'Next character after "{"…" if len(seen) > len(tail) else ""}{tail}"'
                    if seen else "First character of a fresh line")
    settings = f"temperature {temperature:g}" + (f", top-k {top_k}" if top_k else "")
    for ax, network in zip(axes, ("untrained", "trained")):
        rows = table[table["network"] == network]
        positions = np.arange(len(rows))
        ax.bar(positions - 0.2, rows["probability"], 0.4, label="model (temperature 1)",
               color="#92c5de")
        ax.bar(positions + 0.2, rows["after_settings"], 0.4, label=f"sampled at {settings}",
               color="#2166ac")
        ax.set_xticks(positions, [visible_char(char) for char in rows["char"]], fontsize=12)
        ax.set_title(f"{network.capitalize()} {label}")
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("probability of the next character")
    axes[1].legend(loc="upper right")
    return figure


def next_char_view(models: Models, cell, prefix, temperature, top_k) -> Figure:
    table = next_char_table(models, cell, prefix, temperature, top_k)
    request = check_generate(models, cell, prefix, 1, temperature, top_k, 0)
    pretrained = request.entry.pretrained
    seen = prepare_prefix(request.prefix, pretrained.vocab, pretrained.preprocess).text
    return next_char_figure(table, request.entry.label, request.temperature, request.top_k, seen)


# ---------------------------------------------------------------------------- curves and card


def curves_figure(models: Models) -> Figure:
    """Plot train (dashed) and validation (solid) perplexity per epoch for every model."""
    figure = Figure(figsize=(10, 4.5), layout="constrained")
    ax = figure.subplots()
    colours = matplotlib.colormaps["tab10"].colors
    for colour, entry in zip(colours * 3, models.entries.values()):
        epochs = [record["epoch"] for record in entry.history]
        ax.plot(epochs, [record["val_perplexity"] for record in entry.history], "-",
                color=colour, label=f"{entry.label} validation")
        ax.plot(epochs, [record["train_perplexity"] for record in entry.history], "--",
                color=colour, alpha=0.7, label=f"{entry.label} train")
    if not models.entries:
        ax.text(0.5, 0.5, f"No checkpoint loaded from {models.root}", ha="center",
                transform=ax.transAxes)
    else:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
        ax.legend(ncols=2, fontsize=9)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity (log scale, lower is better)")
    ax.grid(alpha=0.3, which="both")
    return figure


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def format_float(value, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if isinstance(value, numbers.Real) else "–"


def recorded_test_score(entry: Entry) -> tuple[float | None, float | None]:
    """Return the test perplexity and bits per character recorded for the served step, if any.

    `python -m model.evaluate --save` records them in scores.json. A score of
    another step is stale and ignored. The checkpoint metadata is read as well.
    """
    recorded = read_scores(entry.pretrained.directory).get("test", {})
    if recorded.get("step") == entry.pretrained.step:
        return recorded.get("perplexity"), recorded.get("bits_per_char")
    meta = entry.pretrained.meta
    return meta.get("test_perplexity"), meta.get("test_bits_per_char")


def model_card(models: Models) -> pd.DataFrame:
    """Tabulate each model's size, training and scores, with '–' for test scores not yet known."""
    rows = []
    for entry in models.entries.values():
        config, meta = entry.config, entry.latest_meta
        best = entry.pretrained.meta.get("best_val_perplexity", meta.get("best_val_perplexity"))
        test, test_bits = recorded_test_score(entry)
        rows.append({
            "model": entry.label, "cell": config.cell, "layers": config.num_layers,
            "hidden size": config.num_hiddens,
            "parameters": f"{count_params(entry.pretrained.params):,}",
            "epochs": len(entry.history),
            "train time": format_duration(entry.history[-1]["wall_time"])
            if entry.history else "–",
            "val perplexity": format_float(best),
            "val bits/char": format_float(math.log2(best) if best else None, 3),
            "test perplexity": format_float(test),
            "test bits/char": format_float(test_bits, 3)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- scoring


def encode_known(entry: Entry, text: str) -> tuple[np.ndarray, str]:
    """Preprocess `text` as the model's training data was and drop unknown characters."""
    pretrained = entry.pretrained
    normalized = preprocess(text, pretrained.preprocess)
    known = "".join(char for char in normalized if char in pretrained.vocab)
    return pretrained.vocab.encode(known), known


def score_text(models: Models, text, heatmap_cell) -> tuple[pd.DataFrame, str, str]:
    """Score `text` with every network and return the table, the heatmap HTML and a note.

    Every character after the first is predicted from all the characters before
    it, with the carry passed along the whole text (stream scoring).
    """
    text = check_text("text", text)
    entry = check_entry(models, heatmap_cell)
    notes = []
    if len(text) > MAX_SCORE_CHARS:
        notes.append(f"Only the first {MAX_SCORE_CHARS:,} of {len(text):,} characters were "
                     "scored.")
        text = text[:MAX_SCORE_CHARS]
    if len(encode_known(entry, text)[0]) < 2:
        raise reject("the text needs at least 2 characters the models know. Paste some English "
                     "prose")
    rows, heatmap = [], ""
    for name, candidate in models.entries.items():
        ids, known = encode_known(candidate, text)  # ids: (N,)
        if len(ids) < 2:
            continue
        scores = {}
        for network, params in (("untrained", candidate.untrained_params),
                                ("trained", candidate.pretrained.params)):
            log_probs = char_log_probs(params, candidate.config, ids)  # (N - 1,)
            scores[network] = -float(np.mean(log_probs))
            if name == entry.name and network == "trained":
                heatmap = surprisal_html(known, log_probs)
        rows.append({"model": candidate.label, "characters scored": len(ids) - 1,
                     "perplexity untrained": round(math.exp(scores["untrained"]), 2),
                     "perplexity trained": round(math.exp(scores["trained"]), 2),
                     "bits/char untrained": round(scores["untrained"] / math.log(2), 3),
                     "bits/char trained": round(scores["trained"] / math.log(2), 3)})
    if preprocess(text, entry.pretrained.preprocess) != text:
        notes.append(f"The heatmap shows the text as the trained {entry.label} saw it, after its "
                     f"{entry.pretrained.preprocess} preprocessing.")
    return pd.DataFrame(rows), heatmap, " ".join(notes)


def surprisal_html(known: str, log_probs: np.ndarray) -> str:
    """Colour known (N chars) by the probability of each after the first; log_probs is (N - 1,)."""
    first = (f'<span class="pn" title="first character: not predicted">'
             f"{html.escape(known[0])}</span>")
    spans = [f'<span class="{probability_class(lp)}" title="{-lp / math.log(2):.2f} bits '
             f'(p = {math.exp(lp):.1%})">{html.escape(char)}</span>'
             for char, lp in zip(known[1:], log_probs)]
    return first + "".join(spans)


def legend_html(first_char: bool = False) -> str:
    labels = ("below 5%", "5–20%", "20–50%", "50–80%", "80% or more")
    spans = "".join(f'<span class="p{index}">{label}</span>' for index, label in enumerate(labels))
    if first_char:
        spans += '<span class="pn">first character, not predicted</span>'
    return (f'<div class="legend">Probability the model gave each character: {spans} '
            "(hover a character for its value)</div>")


# ---------------------------------------------------------------------------- live training


def find_time_machine() -> pathlib.Path:
    """Return the Time Machine: the shared data folder beside the project, else the cache.

    `find_corpus` downloads it into the cache when it is missing there.
    """
    shared = ROOT.parent / "shared" / "data" / "timemachine.txt"
    return shared if shared.is_file() else find_corpus(None)


def live_text(source, text, upload) -> tuple[str, str]:
    """Return the training text for the chosen source and a note on what was cut."""
    if source == TIME_MACHINE:
        try:
            return read_corpus(find_time_machine()), ""
        except CorpusError as error:
            raise reject(f"The Time Machine is not available here ({error}). Choose "
                         f"'{MY_TEXT}' and paste or upload a text") from error
    if source != MY_TEXT:
        raise reject(f"training data must be {TIME_MACHINE!r} or {MY_TEXT!r}, got {source!r}")
    if upload:
        path = pathlib.Path(upload)
        if path.stat().st_size > LIVE_UPLOAD_BYTES:
            raise reject(f"the uploaded file has {path.stat().st_size:,} bytes, but the limit is "
                         f"{LIVE_UPLOAD_BYTES:,}")
        try:
            text = read_corpus(path)
        except CorpusError as error:
            raise reject(str(error)) from error
    text = check_text("training text", text)
    limit = LIVE_TEXT_CHARS[1]
    if len(text) > limit:
        return text[:limit], f"Trained on the first {limit:,} of {len(text):,} characters. "
    return text, ""


def live_settings(cell, num_hiddens, epochs, preprocess_mode) -> tuple[str, int, int, str]:
    if cell not in LIVE_CELLS:
        raise reject(f"cell must be one of {LIVE_CELLS}, got {cell!r}")
    if preprocess_mode not in ("d2l", "raw"):
        raise reject(f"preprocessing must be 'd2l' or 'raw', got {preprocess_mode!r}")
    num_hiddens = check_number("hidden size", num_hiddens, *LIVE_HIDDENS, integer=True)
    epochs = check_number("epochs", epochs, *LIVE_EPOCHS, integer=True)
    return cell, num_hiddens, epochs, preprocess_mode


def live_train_config(num_train_chars: int, epochs: int, preprocess_mode: str) -> TrainConfig:
    """Settings for a short run: batches shrink for short texts to keep 16+ steps per epoch."""
    batch_size = int(np.clip(num_train_chars // (LIVE_NUM_STEPS * 16), 1, 32))
    return TrainConfig(batch_size=batch_size, num_steps=LIVE_NUM_STEPS, optimizer="adamw",
                       lr=5e-3, lr_schedule="cosine", warmup_epochs=0.25, epochs=epochs,
                       steps_per_call=4, preprocess=preprocess_mode, split="full", seed=0,
                       sample_every=0)


def live_figure(history) -> Figure:
    figure = Figure(figsize=(7, 3.6), layout="constrained")
    ax = figure.subplots()
    epochs = [record["epoch"] for record in history]
    ax.plot(epochs, [record["train_perplexity"] for record in history], "o--", label="train")
    ax.plot(epochs, [record["val_perplexity"] for record in history], "o-", label="validation")
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity")
    ax.grid(alpha=0.3)
    if history:
        ax.legend()
    return figure


def live_status(update: LiveUpdate, epochs: int, note: str) -> str:
    progress = (f"Epoch {min(update.epochs_done + 1, epochs)} of {epochs}, step "
                f"{update.steps_done} of {update.steps_per_epoch} · {update.elapsed:.0f} s")
    if update.history:
        last = update.history[-1]
        progress += (f" · validation perplexity {last['val_perplexity']:.2f} after epoch "
                     f"{last['epoch']}")
    return note + progress


def stream_train(source, text, upload, cell, num_hiddens, epochs, preprocess_mode,
                 time_limit: float = LIVE_TIME_LIMIT) -> Iterator[tuple]:
    """Train a small model from scratch, yielding (status, curve, sample) as it goes.

    Between epochs only the status changes (the other outputs are skipped), so
    a Stop press takes effect within one fused chunk of steps.
    """
    cell, num_hiddens, epochs, preprocess_mode = live_settings(cell, num_hiddens, epochs,
                                                               preprocess_mode)
    if source == TIME_MACHINE:
        preprocess_mode = "d2l"
    text, note = live_text(source, text, upload)
    normalized = preprocess(text, preprocess_mode)
    if len(normalized) < LIVE_TEXT_CHARS[0]:
        raise reject(f"the training text has {len(normalized):,} characters after "
                     f"{preprocess_mode} preprocessing, but at least {LIVE_TEXT_CHARS[0]:,} are "
                     "needed")
    config = live_train_config(int(len(normalized) * 0.9), epochs, preprocess_mode)
    corpus = build_corpus(text, preprocess_mode, "full", config.num_steps)
    model_config = ModelConfig(vocab_size=len(corpus.vocab), cell=cell, num_hiddens=num_hiddens)
    prefix = DEFAULT_PREFIX if source == TIME_MACHINE else normalized[:20]
    log.info("live training: %s, %d hidden, %d epochs, %d characters", cell, num_hiddens,
             epochs, len(normalized))
    yield note + "Compiling the training step…", live_figure([]), ""
    update = None
    for update in train_live(model_config, config, corpus, time_limit=time_limit,
                             sample_prefix=prefix):
        status = live_status(update, epochs, note)
        if update.params is None:
            yield status, gr.skip(), gr.skip()
        else:
            yield status, live_figure(update.history), prefix + update.sample
    if update is not None:
        ending = (f"**Stopped at the time limit of {time_limit:.0f} s.** " if update.timed_out
                  else "**Finished.** ")
        yield ending + live_status(update, epochs, note), gr.skip(), gr.skip()


# ---------------------------------------------------------------------------- the page

INTRO = """# Concise RNN: what does a character-level language model learn?
Each model reads text one character at a time and predicts the next one. Compare a network
before training (step 0) with the same network after training on H. G. Wells' *The Time
Machine*: same prefix, same settings, same seed."""

EXAMPLE_PREFIXES = [["the time traveller"], ["the machine"], ["it was a"],
                    ["The Time Traveller (for so it will be convenient to speak of him)"],
                    ["In 1895, 42 people said: WOW!"]]
SCORE_EXAMPLE = ("the time traveller looked at us with a smile and held the little machine up "
                 "so that we could all see it")

# Concurrency for a 2-core CPU machine. Sampling both panels of a 512-unit LSTM takes about
# 0.2 s of CPU (measured on 2 shared cores). A streaming reveal then mostly sleeps between
# page updates, so up to 8 reveals share the cores. The `generate` API endpoint and the
# next-character and scoring events are short bursts of work, 2 at a time each. Live
# training keeps both cores busy for up to LIVE_TIME_LIMIT seconds, so it runs one at a
# time. At most 64 requests wait in the queue, and later ones get a "queue full" error.
STREAM_CONCURRENCY = 8
SHORT_CONCURRENCY = 2
TRAIN_CONCURRENCY = 1
QUEUE_SIZE = 64


def build_demo(models: Models) -> gr.Blocks:
    """Build the page; nothing is served until `launch()` is called on the result."""
    choices, default = models.choices(), models.default_name()
    default_titles = (panel_titles(models.entries[default]) if default
                      else ("### Untrained", "### Trained"))
    with gr.Blocks(title="Concise RNN", analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        if models.failures:
            failed = "; ".join(f"**{name}** ({error})" for name, error in models.failures.items())
            gr.Markdown(f"⚠️ These checkpoints failed to load and are not offered: {failed}")
        with gr.Tab("Generate"):
            generate_inputs = generate_tab(models, choices, default, default_titles)
        with gr.Tab("Next character") as next_tab:
            next_inputs, show_next = next_char_tab(models, choices, default)
        with gr.Tab("Training curves"):
            gr.Markdown("Perplexity after each epoch of every shipped model: solid lines on "
                        "its validation text, which it never trains on, dashed lines on its "
                        "training text.")
            gr.Plot(curves_figure(models), label="Perplexity per epoch", show_label=False,
                    format="png", elem_id="curves")
            gr.Dataframe(model_card(models), label="Model card", interactive=False)
        with gr.Tab("Score your text"):
            score_tab(models, choices, default)
        with gr.Tab("Train live"):
            train_tab()
        # The next-character tab starts from the Generate tab's current settings.
        next_tab.select(lambda *values: values, generate_inputs, next_inputs,
                        queue=False, api_visibility="private").then(
                            **show_next, api_name="next_character")
    return demo


def generate_tab(models: Models, choices, default, titles) -> list:
    """Lay out the Generate tab; return its model, prefix, temperature and top-k inputs."""
    with gr.Row():
        with gr.Column(scale=3):
            cell = gr.Dropdown(choices, value=default, label="Model")
            prefix = gr.Textbox(DEFAULT_PREFIX, label="Prefix", lines=2, elem_id="prefix",
                                info=f"the text both models continue; up to "
                                     f"{MAX_PREFIX_CHARS:,} characters")
            gr.Examples(EXAMPLE_PREFIXES, inputs=[prefix], label="Example prefixes",
                        cache_examples=False)
        with gr.Column(scale=2):
            temperature = gr.Slider(0, MAX_TEMPERATURE, value=0.8, step=0.05,
                                    label="Temperature (lower is more predictable)",
                                    info="0 always picks the most likely character; 1 samples "
                                         "from the model's own probabilities")
            top_k = gr.Slider(0, MAX_TOP_K, value=0, step=1, label="Top-k",
                              info="sample only among the k most likely characters; 0 = off")
            num_chars = gr.Slider(1, MAX_CHARS, value=300, step=1,
                                  label=f"Length in characters (max {MAX_CHARS:,})")
            with gr.Row():
                seed = gr.Number(0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed",
                                 info="same seed and settings give the same text")
                speed = gr.Dropdown(list(SPEEDS), value=DEFAULT_SPEED, label="Reveal speed")
            colour = gr.Checkbox(True, label="Colour each character by its probability")
    with gr.Row():
        run = gr.Button("Generate", variant="primary", elem_id="generate")
        stop = gr.Button("Stop", variant="stop", elem_id="stop")
    note = gr.HTML(elem_id="prefix-note")
    outputs = [note]
    with gr.Row(equal_height=True):
        for title, elem_id in zip(titles, ("untrained", "trained")):
            with gr.Column():
                outputs += [gr.Markdown(title),
                            gr.HTML(elem_id=f"{elem_id}-text", elem_classes="sample-text"),
                            gr.Markdown(elem_id=f"{elem_id}-stats")]
    gr.HTML(legend_html())

    def stream(cell, prefix, num_chars, temperature, top_k, seed, speed, colour):
        yield from stream_generate(models, cell, prefix, num_chars, temperature, top_k, seed,
                                   speed, colour)

    def generate(prefix: str | None = DEFAULT_PREFIX, cell: str = default or "lstm",
                 num_chars: int = 200, temperature: float = 1.0, top_k: int = 0,
                 seed: int = 0) -> tuple[str, str]:
        """Return (untrained text, trained text); each starts with the prefix the model saw."""
        return generate_texts(models, prefix, cell, num_chars, temperature, top_k, seed)

    inputs = [cell, prefix, num_chars, temperature, top_k, seed, speed, colour]
    options = dict(fn=stream, inputs=inputs, outputs=outputs, show_progress="hidden",
                   concurrency_limit=STREAM_CONCURRENCY, concurrency_id="stream",
                   api_visibility="private")
    events = [run.click(**options), prefix.submit(**options)]
    stop.click(None, cancels=events)
    cell.input(lambda name: panel_titles(check_entry(models, name)), cell,
               [outputs[1], outputs[4]], queue=False, api_visibility="private")
    gr.api(generate, api_name="generate", concurrency_limit=SHORT_CONCURRENCY,
           concurrency_id="api")
    return [cell, prefix, temperature, top_k]


def next_char_tab(models: Models, choices, default) -> tuple[list, dict]:
    """Lay out the Next character tab; return its inputs and the event that redraws it."""
    gr.Markdown("What each network expects right after the prefix: light bars are the model's "
                "probabilities, dark bars the ones the sampler draws from after temperature "
                "and top-k.")
    with gr.Row():
        cell = gr.Dropdown(choices, value=default, label="Model")
        prefix = gr.Textbox(DEFAULT_PREFIX, label="Prefix", scale=2)
        temperature = gr.Slider(0, MAX_TEMPERATURE, value=0.8, step=0.05,
                                label="Temperature (lower is more predictable)")
        top_k = gr.Slider(0, MAX_TOP_K, value=0, step=1, label="Top-k (0 = off)")
    plot = gr.Plot(label="Next-character probabilities", show_label=False, format="png",
                   elem_id="next-plot")

    def show(cell, prefix, temperature, top_k):
        return next_char_view(models, cell, prefix, temperature, top_k)

    inputs = [cell, prefix, temperature, top_k]
    event = dict(fn=show, inputs=inputs, outputs=plot, concurrency_limit=SHORT_CONCURRENCY,
                 concurrency_id="short")
    for trigger in (cell.input, prefix.input, temperature.release, top_k.release):
        trigger(**event, trigger_mode="always_last", api_visibility="private")
    return inputs, event


def score_tab(models: Models, choices, default) -> None:
    with gr.Row():
        text = gr.Textbox(SCORE_EXAMPLE, label="Your text", lines=5, scale=3,
                          info=f"the first {MAX_SCORE_CHARS:,} characters are scored")
        with gr.Column(scale=1):
            cell = gr.Dropdown(choices, value=default, label="Heatmap of the trained model")
            run = gr.Button("Score", variant="primary")
    table = gr.Dataframe(label="Perplexity and bits per character (lower is better)",
                         interactive=False)
    note = gr.Markdown()
    gr.Markdown("**Heatmap:** how surprising each character was to the trained model chosen "
                "above, given all the characters before it.")
    heatmap = gr.HTML(elem_id="heatmap", elem_classes="sample-text")
    gr.HTML(legend_html(first_char=True))

    def score(text, cell):
        return score_text(models, text, cell)

    run.click(score, [text, cell], [table, heatmap, note], api_name="score",
              concurrency_limit=SHORT_CONCURRENCY, concurrency_id="short")


def train_tab() -> None:
    gr.Markdown(f"Train a small model from scratch and watch it learn. Runs stop after "
                f"{LIVE_TIME_LIMIT:.0f} s; one run at a time.")
    with gr.Row():
        with gr.Column():
            source = gr.Radio([TIME_MACHINE, MY_TEXT], value=TIME_MACHINE, label="Training text")
            text = gr.Textbox(label="Your text", lines=4,
                              info=f"{LIVE_TEXT_CHARS[0]:,} to {LIVE_TEXT_CHARS[1]:,} "
                                   "characters; a longer text is cut")
            upload = gr.File(label=f"or upload a UTF-8 .txt file (up to "
                                   f"{LIVE_UPLOAD_BYTES // 1000:,} kB)",
                             file_types=[".txt"], type="filepath", height=120)
            preprocess_mode = gr.Radio(["d2l", "raw"], value="d2l",
                                       label="Preprocessing of your text",
                                       info="d2l: lowercase letters and spaces only; raw: "
                                            "every character as it is")
        with gr.Column():
            cell = gr.Radio([(CELL_LABELS[name], name) for name in LIVE_CELLS], value="lstm",
                            label="Cell")
            num_hiddens = gr.Slider(*LIVE_HIDDENS, value=64, step=16, label="Hidden size",
                                    elem_id="live-hidden")
            epochs = gr.Slider(*LIVE_EPOCHS, value=5, step=1, label="Epochs",
                               elem_id="live-epochs")
            with gr.Row():
                run = gr.Button("Train", variant="primary", elem_id="live-train")
                stop = gr.Button("Stop", variant="stop", elem_id="live-stop")
    status = gr.Markdown(elem_id="live-status")
    with gr.Row():
        curve = gr.Plot(label="Perplexity per epoch", show_label=False, format="png",
                        elem_id="live-plot")
        sample = gr.Textbox(label="Sample after the last epoch (temperature 0.7)", lines=8)
    event = run.click(stream_train, [source, text, upload, cell, num_hiddens, epochs,
                                     preprocess_mode], [status, curve, sample],
                      concurrency_limit=TRAIN_CONCURRENCY, concurrency_id="train",
                      show_progress="minimal", api_visibility="private")
    stop.click(None, cancels=[event])


# ---------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Serve the Concise RNN web app. The address comes from "
                    "GRADIO_SERVER_NAME (default 127.0.0.1) and GRADIO_SERVER_PORT (default "
                    "7860).", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint-root",
                        help=f"folder with one checkpoint directory per model; default: "
                             f"${CHECKPOINT_ENV}, else checkpoints/ beside app.py")
    parser.add_argument("--share", action="store_true",
                        help="also publish the app through a temporary public gradio.live link")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s", datefmt="%H:%M:%S", force=True)
    logging.getLogger("absl").setLevel(logging.ERROR)  # Orbax warns on every read-only open
    for noisy in ("httpx", "jax._src.xla_bridge"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    started = time.perf_counter()
    models = load_models(checkpoint_root(args.checkpoint_root))
    warm_up(models)
    log.info("%d model(s) ready in %.1f s", len(models.entries), time.perf_counter() - started)
    demo = build_demo(models)
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=SHORT_CONCURRENCY)
    port = os.environ.get("GRADIO_SERVER_PORT")
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                server_port=int(port) if port else None, share=args.share, css=CSS,
                max_file_size=LIVE_UPLOAD_BYTES)


if __name__ == "__main__":
    main()
