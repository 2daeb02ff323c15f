"""Web app: compare untrained and trained character-level RNN, GRU and LSTM language models.

    python app.py                                   # http://127.0.0.1:7860
    GRADIO_SERVER_PORT=7861 python app.py --checkpoint-root runs
    GRADIO_SERVER_NAME=0.0.0.0 python app.py        # listen on every interface

Tabs: Generate, Next character, Training curves, Score your text, Train live.
This file builds the page from the tabs in the `webapp` package and parses the
command line. `import app` defines functions only. `main()` loads every
checkpoint under the checkpoint root once, launches the server, and meanwhile
compiles the sampling and scoring functions in a thread. The handlers take a
`Models` value first, so tests call them directly.
"""

import argparse
import logging
import os
import threading
import time

# The app sends no usage statistics unless GRADIO_ANALYTICS_ENABLED=True is set.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402  (after the environment default)

from starlette.middleware import Middleware  # noqa: E402

from webapp.body_limit import BodySizeLimit  # noqa: E402
from webapp.curves_tab import curves_tab  # noqa: E402
from webapp.generate_tab import generate_tab, panel_titles  # noqa: E402
from webapp.limits import MAX_REQUEST_BYTES, QUEUE_SIZE, SHORT_CONCURRENCY  # noqa: E402
from webapp.models import (CHECKPOINT_ENV, Models, checkpoint_root, load_models,  # noqa: E402
                           warm_up)
from webapp.next_char_tab import next_char_tab  # noqa: E402
from webapp.page_style import CSS  # noqa: E402
from webapp.score_tab import score_tab  # noqa: E402
from webapp.train_tab import LIVE_UPLOAD_BYTES, train_tab  # noqa: E402

log = logging.getLogger("app")

INTRO = """# Concise RNN: what does a character-level language model learn?
Each model reads text one character at a time and predicts the next one. Compare a network
before training (step 0) with the same network after training on a book (H. G. Wells' *The
Time Machine*, or Shakespeare's plays for the models labelled Shakespeare): same prefix, same
settings, same seed."""


def failures_banner(models: Models) -> str:
    """Describe, in Markdown, the checkpoints that failed to load ('' if none did)."""
    if not models.failures:
        return ""
    failed = "; ".join(f"**{name}** ({error})" for name, error in models.failures.items())
    return (f"⚠️ Not available, because their checkpoints failed to load: {failed}. The "
            "other models work as usual.")


def build_demo(models: Models) -> gr.Blocks:
    """Build the page; nothing is served until `launch()` is called on the result."""
    choices, default = models.choices(), models.default_name()
    default_titles = (panel_titles(models.entries[default]) if default
                      else ("### Untrained", "### Trained"))
    with gr.Blocks(title="Concise RNN", analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        if models.failures:
            gr.Markdown(failures_banner(models), elem_id="unavailable")
        with gr.Tab("Generate"):
            generate_inputs = generate_tab(models, choices, default, default_titles)
        with gr.Tab("Next character") as next_tab:
            next_inputs, show_next = next_char_tab(models, choices, default)
        with gr.Tab("Training curves"):
            curves_tab(models)
        with gr.Tab("Score your text"):
            score_tab(models, choices, default)
        with gr.Tab("Train live"):
            train_tab()
        # The next-character tab starts from the Generate tab's current settings.
        next_tab.select(lambda *values: values, generate_inputs, next_inputs,
                        queue=False, api_visibility="private").then(**show_next)
    return demo


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
    log.info("%d model(s) loaded in %.1f s", len(models.entries), time.perf_counter() - started)
    demo = build_demo(models)
    # Compiling takes longer than loading, so it runs while the page is already served.
    threading.Thread(target=warm_up, args=(models,), name="warm-up", daemon=True).start()
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=SHORT_CONCURRENCY)
    port = os.environ.get("GRADIO_SERVER_PORT")
    # Uploads above LIVE_UPLOAD_BYTES and request bodies above MAX_REQUEST_BYTES get
    # status 413, so no request can make the server hold an unbounded input in memory.
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                server_port=int(port) if port else None, share=args.share, css=CSS,
                max_file_size=LIVE_UPLOAD_BYTES,
                app_kwargs={"middleware": [Middleware(BodySizeLimit,
                                                      max_bytes=MAX_REQUEST_BYTES)]})


if __name__ == "__main__":
    main()
