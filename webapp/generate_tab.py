"""The Generate tab: the untrained and trained network continue one prefix with the same seed.

Shapes: N = characters.
"""

import dataclasses
import html
import math
import time
from typing import Iterator

import gradio as gr
import numpy as np

from model.app_support import CHUNK_CHARS, generate, generate_chunks
from model.data import preprocess
from model.sampling import PreparedPrefix, Sample, prepare_prefix
from webapp.limits import (DEFAULT_PREFIX, MAX_CHARS, MAX_PREFIX_CHARS, MAX_SEED, MAX_TEMPERATURE,
                           MAX_TOP_K, RAW_DEFAULT_PREFIX, SHORT_CONCURRENCY, STREAM_CONCURRENCY)
from webapp.models import Entry, Models
from webapp.page_style import legend_html, probability_class
from webapp.validation import GenerateRequest, check_entry, check_generate, reject

SHOWN_PREFIX_CHARS = 300  # the panels show at most this many prefix characters

# Reveal speeds in characters per second. None shows the whole text at once.
SPEEDS = {"slow (10 chars/s)": 10, "reading (30 chars/s)": 30, "fast (100 chars/s)": 100,
          "instant": None}
DEFAULT_SPEED = "reading (30 chars/s)"
UPDATES_PER_SEC = 25  # page updates per second while revealing

EXAMPLE_PREFIXES = [["the time traveller"], ["the machine"], ["it was a"],
                    ["The Time Traveller (for so it will be convenient to speak of him)"],
                    ["In 1895, 42 people said: WOW!"]]
# Offered too when a model trained on raw text (case, punctuation and newlines kept) is loaded.
RAW_EXAMPLE_PREFIXES = [[RAW_DEFAULT_PREFIX], ["JULIET:\nO Romeo, Romeo! wherefore art thou "
                                               "Romeo?\n\nROMEO:\n"]]


def run_generation(request: GenerateRequest) -> tuple[Sample, Sample]:
    """Sample from the untrained and the trained network with the same prefix, settings and seed.

    Each step's key does not depend on the length, so a shorter request returns
    the start of a longer one.
    """
    pretrained = request.entry.pretrained
    return tuple(generate(params, pretrained.model_config, pretrained.vocab,
                          pretrained.preprocess, request.prefix, request.num_chars,
                          seed=request.seed, temperature=request.temperature,
                          top_k=request.top_k)
                 for params in (request.entry.untrained_params, pretrained.params))


def sample_pieces(request: GenerateRequest,
                  prepared: PreparedPrefix) -> Iterator[tuple[tuple[str, np.ndarray], ...]]:
    """Yield the next piece of the untrained and of the trained text, as (text, log_probs) pairs."""
    pretrained = request.entry.pretrained
    streams = [generate_chunks(params, pretrained.model_config, pretrained.vocab, prepared,
                               request.num_chars, seed=request.seed,
                               temperature=request.temperature, top_k=request.top_k)
               for params in (request.entry.untrained_params, pretrained.params)]
    return zip(*streams)


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


def prefix_after_model_change(models: Models, entry: Entry, prefix: str | None) -> str | None:
    """Return `entry`'s default prefix if `prefix` is still a model's default, else None.

    A prefix the user typed is kept, but "the time traveller" becomes "ROMEO:\\n" when
    a model trained on raw dialogue is chosen, and back again.
    """
    defaults = {DEFAULT_PREFIX} | {other.default_prefix for other in models.entries.values()}
    return entry.default_prefix if prefix in defaults and prefix != entry.default_prefix else None


def panel_titles(entry: Entry) -> tuple[str, str]:
    epochs = len(entry.history)
    return (f"### Untrained {entry.label}\nthe same network at step 0, before any training",
            f"### Trained {entry.label}\nstep {entry.pretrained.step:,}, "
            f"{epochs} epoch{'s' if epochs != 1 else ''} of training")


def reveal_due(num_chars: int, chars_per_sec: float | None, elapsed: float) -> int:
    """Return how many characters should show `elapsed` seconds into the reveal.

    The first character shows at once; None reveals everything as soon as it is sampled.
    """
    if chars_per_sec is None:
        return num_chars
    return min(num_chars, 1 + int(elapsed * chars_per_sec))


def stream_generate(models: Models, cell, prefix, num_chars, temperature, top_k, seed,
                    speed, colour) -> Iterator[tuple]:
    """Yield (note, untrained title, untrained text, untrained stats, trained ...) updates.

    The text is sampled in pieces of `CHUNK_CHARS` characters, only as far as the
    reveal at the chosen speed needs, so the first characters show after one
    piece rather than after the whole text. Each panel's HTML only ever grows at
    its end, so Gradio streams it as appends.
    """
    if speed not in SPEEDS:
        raise reject(f"speed must be one of {list(SPEEDS)}, got {speed!r}")
    request = check_generate(models, cell, prefix, num_chars, temperature, top_k, seed)
    pretrained = request.entry.pretrained
    prepared = prepare_prefix(request.prefix, pretrained.vocab, pretrained.preprocess)
    pieces = sample_pieces(request, prepared)
    note = describe_prefix(request, prepared)
    titles = panel_titles(request.entry)
    head = prefix_html(prepared.text)
    spans = ([], [])  # HTML per sampled character, untrained and trained
    log_probs = ([], [])  # float32 arrays, one per piece

    def update(num_shown: int) -> tuple:
        panels = []
        for panel, title in enumerate(titles):
            sampled = np.concatenate(log_probs[panel] or [np.zeros(0, np.float32)])
            panels += [title, head + "".join(spans[panel][:num_shown]),
                       text_stats(sampled[:num_shown])]
        return (note, *panels)

    yield update(0)
    started = last_update = time.monotonic()
    num_shown = num_sampled = 0
    while num_shown < request.num_chars:
        due = reveal_due(request.num_chars, SPEEDS[speed], time.monotonic() - started)
        if num_sampled < due:
            for panel, (text, piece_log_probs) in enumerate(next(pieces)):
                spans[panel].extend(char_spans(text, piece_log_probs, bool(colour)))
                log_probs[panel].append(piece_log_probs)
            num_sampled += len(text)
            if num_shown and time.monotonic() - last_update < 1.0 / UPDATES_PER_SEC:
                continue  # keep sampling until the next page update is due
        ready = min(due, num_sampled)
        if ready > num_shown:
            num_shown = ready
            yield update(num_shown)
            last_update = time.monotonic()
        else:
            time.sleep(1.0 / UPDATES_PER_SEC)


def generate_texts(models: Models, prefix: str | None = DEFAULT_PREFIX, cell: str = "lstm",
                   num_chars: int = 200, temperature: float = 1.0, top_k: int = 0,
                   seed: int = 0) -> tuple[str, str]:
    """Return the untrained and the trained text, each the prefix the model saw plus its continuation."""
    request = check_generate(models, cell, prefix, num_chars, temperature, top_k, seed)
    untrained, trained = run_generation(request)
    return (untrained.prefix.text + untrained.text, trained.prefix.text + trained.text)


def generate_tab(models: Models, choices, default, titles) -> list:
    """Lay out the Generate tab; return its model, prefix, temperature and top-k inputs."""
    default_prefix = models.entries[default].default_prefix if default else DEFAULT_PREFIX
    examples = EXAMPLE_PREFIXES
    if any(entry.pretrained.preprocess == "raw" for entry in models.entries.values()):
        examples = RAW_EXAMPLE_PREFIXES + EXAMPLE_PREFIXES
    with gr.Row():
        with gr.Column(scale=3):
            cell = gr.Dropdown(choices, value=default, label="Model")
            prefix = gr.Textbox(default_prefix, label="Prefix", lines=2, elem_id="prefix",
                                info=f"the text both models continue; up to "
                                     f"{MAX_PREFIX_CHARS:,} characters")
            gr.Examples(examples, inputs=[prefix], label="Example prefixes",
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
                # No minimum, maximum or precision: Gradio would reject or round a typed
                # value before the handler, whose check names the value and the range.
                seed = gr.Number(0, label="Seed", elem_id="seed",
                                 info=f"0 to {MAX_SEED:,}; same seed and settings give the "
                                      "same text")
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

    def change_model(name, current_prefix):
        entry = check_entry(models, name)
        new_prefix = prefix_after_model_change(models, entry, current_prefix)
        return (*panel_titles(entry), gr.skip() if new_prefix is None else new_prefix)

    cell.input(change_model, [cell, prefix], [outputs[1], outputs[4], prefix], queue=False,
               api_visibility="private")
    gr.api(generate, api_name="generate", concurrency_limit=SHORT_CONCURRENCY,
           concurrency_id="api")
    return [cell, prefix, temperature, top_k]
