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

SCORE_COLUMNS = ["model", "characters scored", "perplexity untrained", "perplexity trained",
                 "bits/char untrained", "bits/char trained"]
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
    text = check_text("text to score", text)
    entry = check_entry(models, heatmap_cell)
    notes = []
    if len(text) > MAX_SCORE_CHARS:
        notes.append(f"Only the first {MAX_SCORE_CHARS:,} of {len(text):,} characters were "
                     "scored.")
        text = text[:MAX_SCORE_CHARS]
    num_known = len(encode_known(entry, text)[0])
    if num_known < 2:
        raise reject(f"the text must contain at least 2 characters that {entry.label} knows "
                     f"after {entry.pretrained.preprocess} preprocessing, got {num_known}. "
                     "Paste some English prose")
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
    normalized = preprocess(text, entry.pretrained.preprocess)
    if normalized != text:
        notes.append(f"The heatmap shows the text as the trained {entry.label} saw it, after its "
                     f"{entry.pretrained.preprocess} preprocessing.")
    unknown = entry.pretrained.vocab.unknown(normalized)
    if unknown:
        listed = " ".join(repr(char) for char in unknown[:20])
        notes.append(f"Characters {entry.label} does not know were left out: "
                     f"{html.escape(listed, quote=False)}.")
    return pd.DataFrame(rows, columns=SCORE_COLUMNS), heatmap, " ".join(notes)


def surprisal_html(known: str, log_probs: np.ndarray) -> str:
    """Colour known (N chars) by the probability of each after the first; log_probs is (N - 1,)."""
    first = (f'<span class="pn" title="first character: not predicted">'
             f"{html.escape(known[0])}</span>")
    spans = [f'<span class="{probability_class(lp)}" title="{-lp / math.log(2):.2f} bits '
             f'(p = {math.exp(lp):.1%})">{html.escape(char)}</span>'
             for char, lp in zip(known[1:], log_probs)]
    return first + "".join(spans)


def score_api(models: Models, text, cell) -> tuple[dict, str, str]:
    """Return score_text's table as {"headers": [...], "data": rows}, its heatmap and note."""
    table, heatmap, note = score_text(models, text, cell)
    return ({"headers": list(table.columns), "data": table.to_dict(orient="split")["data"]},
            heatmap, note)


def score_tab(models: Models, choices, default) -> None:
    """Lay out the Score your text tab; API callers use the `score` endpoint."""
    with gr.Row():
        text = gr.Textbox(SCORE_EXAMPLE, label="Your text", lines=5, scale=3,
                          info=f"the first {MAX_SCORE_CHARS:,} characters are scored")
        with gr.Column(scale=1):
            cell = gr.Dropdown(choices, value=default, label="Heatmap of the trained model")
            run = gr.Button("Score", variant="primary")
    table = gr.Dataframe(label="Perplexity and bits per character (lower is better)",
                         headers=SCORE_COLUMNS, interactive=False, elem_id="score-table")
    note = gr.Markdown()
    gr.Markdown("**Heatmap:** how surprising each character was to the trained model chosen "
                "above, given all the characters before it.")
    heatmap = gr.HTML(elem_id="heatmap", elem_classes="sample-text")
    gr.HTML(legend_html(first_char=True))

    def show(text, cell):
        return score_text(models, text, cell)

    def score(text: str | None = SCORE_EXAMPLE, cell: str = default or "lstm"
              ) -> tuple[dict, str, str]:
        """Return the perplexity table {"headers", "data"}, the heatmap HTML and a note.

        Every model scores the first 10,000 characters of `text`. `cell` chooses the
        trained model whose surprisal heatmap is returned.
        """
        return score_api(models, text, cell)

    run.click(show, [text, cell], [table, heatmap, note], concurrency_limit=SHORT_CONCURRENCY,
              concurrency_id="short", api_visibility="private")
    gr.api(score, api_name="score", concurrency_limit=SHORT_CONCURRENCY, concurrency_id="short")
