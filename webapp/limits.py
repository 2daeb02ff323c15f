"""Request limits: the input ranges every handler checks, and how many requests run at once.

Every request is bounded in time and memory by these values:

- Work per request: generation makes at most MAX_CHARS characters after a prefix of at
  most MAX_PREFIX_CHARS. Scoring reads at most MAX_SCORE_CHARS characters. Live training
  stops after LIVE_TIME_LIMIT seconds (webapp/train_tab.py).
- Compiled shapes: inputs are padded to power-of-two buckets (model/app_support.py), so
  these limits allow at most 6 prefix buckets (64 to 2,048) and 9 scoring buckets (64 to
  16,384) per model config, and no request can make the app compile without bound.
- Request size: an HTTP request body above MAX_REQUEST_BYTES gets status 413 before it is
  read (webapp/body_limit.py), and an uploaded file above LIVE_UPLOAD_BYTES is rejected by
  Gradio's `max_file_size`.
- Waiting: at most QUEUE_SIZE requests wait in the queue, and later ones get a
  "queue full" error.
"""

# Limits that every request is checked against, whatever the sliders allow.
DEFAULT_PREFIX = "the time traveller"
RAW_DEFAULT_PREFIX = "ROMEO:\n"  # for models trained on raw text, which keeps case and newlines
MAX_PREFIX_CHARS = 2_000  # longer prefixes keep their last MAX_PREFIX_CHARS characters
MAX_CHARS = 1_000  # generated characters per request
MIN_POSITIVE_TEMPERATURE = 0.01  # 0 is greedy; smaller positive values are rejected
MAX_TEMPERATURE = 2.0
MAX_TOP_K = 100
MAX_SEED = 2**32 - 1
MAX_SCORE_CHARS = 10_000  # longer texts are scored on their first MAX_SCORE_CHARS characters

# A pasted live-training text of 300,000 characters takes at most 1.2 MB as UTF-8 JSON,
# and the cap leaves room for about 1 million pasted ASCII characters.
MAX_REQUEST_BYTES = 4 * 2**20

# Concurrency for a 2-core CPU machine. Sampling both panels of a 512-unit LSTM takes about
# 0.2 s of CPU (measured on 2 shared cores). A streaming reveal then mostly sleeps between
# page updates, so up to 8 reveals share the cores. The `generate` API endpoint and the
# next-character and scoring events are short bursts of work, 2 at a time each. Live
# training keeps both cores busy for up to LIVE_TIME_LIMIT seconds, so it runs one at a
# time. At most 64 requests wait in the queue, and later ones get a "queue full" error.
STREAM_CONCURRENCY = 8
SHORT_CONCURRENCY = 2
TRAIN_CONCURRENCY = 1
QUEUE_SIZE = 64
