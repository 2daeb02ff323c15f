"""Checks on request inputs. Each raises gr.Error for a value the app cannot serve."""

import dataclasses
import logging
import math
import numbers

import gradio as gr

from webapp.limits import (MAX_CHARS, MAX_PREFIX_CHARS, MAX_SEED, MAX_TEMPERATURE, MAX_TOP_K,
                           MIN_POSITIVE_TEMPERATURE)
from webapp.models import Entry, Models

log = logging.getLogger("app")


def reject(message: str) -> gr.Error:
    """Log a rejected request and return the error to raise."""
    log.info("rejected request: %s", message)
    return gr.Error(message, print_exception=False)


def shown(value, max_chars: int = 60) -> str:
    """Return repr(value) for a message, cut to `max_chars` so a huge input stays readable."""
    text = repr(value)
    return text if len(text) <= max_chars else text[:max_chars - 1] + "…"


def is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_number(name: str, value, low: float, high: float, *, integer: bool) -> float:
    """Return `value` if it is a finite number in [low, high] (whole if `integer`), else raise.

    A whole float such as 40.0 is accepted as the integer 40.
    """
    kind = "whole number" if integer else "number"
    upper = str(int(high)) if integer else f"{high:g}"
    allowed = f"{name} must be a {kind} from {low:g} to {upper}"
    if not is_number(value):
        raise reject(f"{allowed}, got {shown(value)}")
    if not math.isfinite(value) or not low <= value <= high or (integer and value != int(value)):
        raise reject(f"{allowed}, got {shown(value)}")
    return int(value) if integer else float(value)


def check_temperature(value) -> float:
    """Return a temperature of 0 (greedy) or from MIN_POSITIVE_TEMPERATURE to MAX_TEMPERATURE.

    A positive temperature far below the minimum makes logits / temperature overflow
    float32 (below about 1e-37 for logits near 10) and the probabilities NaN. At 0.01
    sampling is already close to greedy, so smaller values are rejected, not rounded.
    """
    allowed = (f"temperature must be 0 (greedy) or a number from {MIN_POSITIVE_TEMPERATURE:g} "
               f"to {MAX_TEMPERATURE:g}")
    if not is_number(value) or not math.isfinite(value):
        raise reject(f"{allowed}, got {shown(value)}")
    if value != 0 and not MIN_POSITIVE_TEMPERATURE <= value <= MAX_TEMPERATURE:
        raise reject(f"{allowed}, got {shown(value)}")
    return float(value)


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
    available = ", ".join(f"{name} ({entry.label})" for name, entry in models.entries.items())
    raise reject(f"unknown model {shown(cell)}. Choose one of: {available}")


def check_text(name: str, value) -> str:
    """Return a text input as a string. A cleared textbox sends None, which means empty."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise reject(f"{name} must be text, got {type(value).__name__} {shown(value)}")
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
        temperature=check_temperature(temperature),
        top_k=check_number("top-k", top_k, 0, MAX_TOP_K, integer=True),
        seed=check_number("seed", seed, 0, MAX_SEED, integer=True))
