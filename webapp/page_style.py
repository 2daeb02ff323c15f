"""The page's CSS, and the colour classes for the probability a model gave each character."""

import math

import numpy as np

# Colour classes by the probability a model gave a character: p0 below 5% ... p4 from 80%.
PROBABILITY_BINS = (0.05, 0.2, 0.5, 0.8)
CSS = """
.prose.sample-text { white-space: pre-wrap; overflow-wrap: anywhere; word-break: break-all;
  font-family: var(--font-mono); line-height: 1.7;
  min-height: 10em; max-height: 26em; overflow-y: auto; padding: 10px 12px;
  border: 1px solid var(--border-color-primary); border-radius: var(--radius-lg); }
.prose.sample-text .prefix { color: var(--body-text-color-subdued); font-style: italic; }
.p0, .p1, .p2, .p3, .p4, .pn { color: #111; border-radius: 2px; }
.p0 { background: #f4a582; } .p1 { background: #fddbc7; } .p2 { background: #f7f7f7; }
.p3 { background: #d1e5f0; } .p4 { background: #92c5de; } .pn { background: #dddddd; }
.legend span { padding: 1px 6px; margin-right: 4px; font-family: var(--font-mono); }
"""


def probability_class(log_prob: float) -> str:
    return f"p{int(np.searchsorted(PROBABILITY_BINS, math.exp(log_prob), side='right'))}"


def legend_html(first_char: bool = False) -> str:
    labels = ("below 5%", "5–20%", "20–50%", "50–80%", "80% or more")
    spans = "".join(f'<span class="p{index}">{label}</span>' for index, label in enumerate(labels))
    if first_char:
        spans += '<span class="pn">first character, not predicted</span>'
    return (f'<div class="legend">Probability the model gave each character: {spans} '
            "(hover a character for its value)</div>")
