"""The Training curves tab: perplexity per epoch of every model, and the model card."""

import math
import numbers

import gradio as gr
import matplotlib
import pandas as pd
from matplotlib import ticker
from matplotlib.figure import Figure

from model.evaluate import read_scores
from model.rnn import count_params
from webapp.models import Entry, Models


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


def curves_tab(models: Models) -> None:
    """Lay out the Training curves tab."""
    gr.Markdown("Perplexity after each epoch of every shipped model: solid lines on "
                "its validation text, which it never trains on, dashed lines on its "
                "training text.")
    gr.Plot(curves_figure(models), label="Perplexity per epoch", show_label=False,
            format="png", elem_id="curves")
    gr.Dataframe(model_card(models), label="Model card", interactive=False)
