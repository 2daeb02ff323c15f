"""The Train live tab: train a small model from scratch in the page and watch it learn."""

import logging
import pathlib
from typing import Iterator

import gradio as gr
import numpy as np
from matplotlib import ticker
from matplotlib.figure import Figure

from model.app_support import LiveUpdate, train_live
from model.config import ModelConfig, TrainConfig
from model.data import CorpusError, build_corpus, find_corpus, preprocess, read_corpus
from webapp.limits import DEFAULT_PREFIX, TRAIN_CONCURRENCY
from webapp.models import CELL_LABELS, ROOT
from webapp.validation import check_number, check_text, reject

log = logging.getLogger("app")

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
    if "\x00" in text:
        raise reject("the training text contains NUL characters, so it looks binary. Paste or "
                     "upload plain text")
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
        plural = "" if len(normalized) == 1 else "s"
        raise reject(f"the training text has {len(normalized):,} character{plural} after "
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
