"""The web app's logic, one module per concept. app.py builds the page from these.

    limits          input ranges every request is checked against, and concurrency
    body_limit      an ASGI middleware that rejects request bodies over MAX_REQUEST_BYTES
    models          Entry and Models: checkpoint discovery, loading and warm-up
    validation      input checks that raise gr.Error with a message for the user
    page_style      the page's CSS and the probability colour classes
    generate_tab    the Generate tab: paired sampling and the paced reveal
    next_char_tab   the Next character tab: next-character probabilities
    curves_tab      the Training curves tab: perplexity curves and the model card
    score_tab       the Score your text tab: perplexity and a surprisal heatmap
    train_tab       the Train live tab: a small model trained from scratch
"""

import os

# The app sends no usage statistics unless GRADIO_ANALYTICS_ENABLED=True is set.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import matplotlib  # noqa: E402  (after the environment default)

matplotlib.use("Agg")  # no display; figures are rendered to images for the page
