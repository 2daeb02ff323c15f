"""Request limits: the input ranges every handler checks, and how many requests run at once."""

# Limits that every request is checked against, whatever the sliders allow.
DEFAULT_PREFIX = "the time traveller"
MAX_PREFIX_CHARS = 2_000  # longer prefixes keep their last MAX_PREFIX_CHARS characters
MAX_CHARS = 1_000  # generated characters per request
MAX_TEMPERATURE = 2.0
MAX_TOP_K = 100
MAX_SEED = 2**32 - 1
MAX_SCORE_CHARS = 10_000  # longer texts are scored on their first MAX_SCORE_CHARS characters

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
