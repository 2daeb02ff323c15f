"""The Score your text tab: perplexity of a pasted text under every network, and a heatmap.

Shapes: N = characters.
"""

import html
import math

import gradio as gr
import numpy as np
import pandas as pd

from model.app_support import char_log_probs
from model.data import preprocess
from webapp.limits import MAX_SCORE_CHARS, SHORT_CONCURRENCY
from webapp.models import Entry, Models
from webapp.page_style import legend_html, probability_class
from webapp.validation import check_entry, check_text, reject

SCORE_EXAMPLE = ("the time traveller looked at us with a smile and held the little machine up "
                 "so that we could all see it")


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
