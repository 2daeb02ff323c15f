"""The Next character tab: what each network expects right after a prefix.

Shapes: N = characters, V = vocab_size.
"""

import gradio as gr
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from model.app_support import next_char_logits
from model.sampling import prepare_prefix
from webapp.limits import DEFAULT_PREFIX, MAX_TEMPERATURE, MAX_TOP_K, SHORT_CONCURRENCY
from webapp.models import Models
from webapp.validation import check_generate


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


def next_char_api(models: Models, cell, prefix, temperature, top_k) -> dict:
    """Return the prefix as the models saw it and the next-character table as headers and rows."""
    table = next_char_table(models, cell, prefix, temperature, top_k)
    request = check_generate(models, cell, prefix, 1, temperature, top_k, 0)
    pretrained = request.entry.pretrained
    seen = prepare_prefix(request.prefix, pretrained.vocab, pretrained.preprocess).text
    return {"prefix": seen, "headers": list(table.columns),
            "data": table.to_dict(orient="split")["data"]}


def next_char_view(models: Models, cell, prefix, temperature, top_k) -> Figure:
    table = next_char_table(models, cell, prefix, temperature, top_k)
    request = check_generate(models, cell, prefix, 1, temperature, top_k, 0)
    pretrained = request.entry.pretrained
    seen = prepare_prefix(request.prefix, pretrained.vocab, pretrained.preprocess).text
    return next_char_figure(table, request.entry.label, request.temperature, request.top_k, seen)


def next_char_tab(models: Models, choices, default) -> tuple[list, dict]:
    """Lay out the Next character tab; return its inputs and the event that redraws it.

    The page's events are private. API callers use the `next_character` endpoint, which
    takes plain values, so every value reaches the handler's own checks.
    """
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

    def next_character(cell: str = default or "lstm", prefix: str | None = DEFAULT_PREFIX,
                       temperature: float = 0.8, top_k: int = 0) -> dict:
        """Return {"prefix": the prefix as the model saw it, "headers": [...], "data": rows}.

        Each row is (network, char, probability, after_settings): the 12 most likely
        next characters of the untrained and the trained network, with their
        probability at temperature 1 and after temperature and top-k.
        """
        return next_char_api(models, cell, prefix, temperature, top_k)

    inputs = [cell, prefix, temperature, top_k]
    event = dict(fn=show, inputs=inputs, outputs=plot, concurrency_limit=SHORT_CONCURRENCY,
                 concurrency_id="short", api_visibility="private")
    for trigger in (cell.input, prefix.input, temperature.release, top_k.release):
        trigger(**event, trigger_mode="always_last")
    gr.api(next_character, api_name="next_character", concurrency_limit=SHORT_CONCURRENCY,
           concurrency_id="short")
    return inputs, event
