"""Model and training configuration as frozen dataclasses.

Both configs are stored in every checkpoint's JSON metadata, so a checkpoint
directory is enough to rebuild the model and to resume its training run.
"""

import dataclasses
import math
from typing import Any

CELLS = ("rnn", "gru", "lstm", "scratch")
OPTIMIZERS = ("sgd", "adam", "adamw")
PREPROCESS_MODES = ("d2l", "raw")
SPLITS = ("full", "d2l")
BATCHINGS = ("sequential", "random")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a character-level language model."""

    vocab_size: int  # number of distinct characters (V)
    cell: str = "lstm"  # one of CELLS; "scratch" is the hand-written tanh RNN
    num_hiddens: int = 256  # hidden units per layer (H)
    num_layers: int = 1  # stacked recurrent layers
    dropout: float = 0.0  # drop rate between stacked layers and on the last layer's output
    input_dropout: float = 0.0  # drop rate on the one-hot input characters
    recurrent_dropout: float = 0.0  # drop rate on h_{t-1}, one mask per sequence (variational)

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {CELLS}, got {self.cell!r}")
        if self.vocab_size < 1:
            raise ValueError(f"vocab_size must be at least 1, got {self.vocab_size}")
        if self.num_hiddens < 1:
            raise ValueError(f"num_hiddens must be at least 1, got {self.num_hiddens}")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {self.num_layers}")
        if self.cell == "scratch" and self.recurrent_dropout > 0:
            raise ValueError("recurrent_dropout is not supported for the scratch cell; "
                             "use --recurrent-dropout 0")
        if self.cell == "scratch" and self.num_layers != 1:
            raise ValueError("the scratch RNN has exactly one layer; use --num-layers 1")
        for name in ("dropout", "input_dropout", "recurrent_dropout"):
            rate = getattr(self, name)
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {rate}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimization, data and bookkeeping settings of one training run."""

    batch_size: int = 32  # sequences per step (B)
    num_steps: int = 128  # characters per training sequence (T)
    optimizer: str = "adamw"  # one of OPTIMIZERS
    lr: float = 2e-3  # peak learning rate
    lr_schedule: str = "cosine"  # "constant" or "cosine" (warm-up, then decay to lr * lr_final)
    lr_final: float = 0.02  # final learning rate as a fraction of lr (cosine only)
    warmup_epochs: float = 1.0  # linear warm-up length in epochs (cosine only)
    weight_decay: float = 0.1  # decoupled weight decay (adamw only)
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    epochs: int = 60  # passes over the training part of the corpus
    batching: str = "sequential"  # one of BATCHINGS
    patience: int = 0  # stop after this many epochs without a better val perplexity; 0 = never
    steps_per_call: int = 8  # train steps fused into one jitted call
    preprocess: str = "d2l"  # one of PREPROCESS_MODES
    split: str = "full"  # one of SPLITS
    seed: int = 0  # seeds parameter init, dropout and batch order
    sample_every: int = 5  # epochs between greedy samples in the log; 0 = never

    def __post_init__(self):
        checks = [
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
            (self.preprocess in PREPROCESS_MODES, f"preprocess must be one of {PREPROCESS_MODES}"),
            (self.split in SPLITS, f"split must be one of {SPLITS}"),
            (self.batching in BATCHINGS, f"batching must be one of {BATCHINGS}"),
            (self.lr_schedule in ("constant", "cosine"), "lr_schedule must be constant or cosine"),
            (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
            (self.num_steps >= 1, f"num_steps must be at least 1, got {self.num_steps}"),
            (0 < self.lr < math.inf, f"lr must be a positive finite number, got {self.lr}"),
            (0 <= self.warmup_epochs < math.inf,
             f"warmup_epochs must be 0 or a positive finite number, got {self.warmup_epochs}"),
            (0 <= self.weight_decay < math.inf,
             f"weight_decay must be 0 (off) or a positive finite number, got {self.weight_decay}"),
            (self.grad_clip >= 0, f"grad_clip must be 0 (off) or positive, got {self.grad_clip}"),
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.steps_per_call >= 1,
             f"steps_per_call must be at least 1, got {self.steps_per_call}"),
            (self.patience >= 0, f"patience must be 0 (off) or positive, got {self.patience}"),
            (self.seed >= 0, f"seed must be 0 or positive, got {self.seed}"),
            (self.sample_every >= 0,
             f"sample_every must be 0 (never) or positive, got {self.sample_every}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def from_dict(cls, values: dict):
    """Build `cls` from a dict, ignoring keys that newer versions dropped."""
    names = {field.name for field in dataclasses.fields(cls)}
    return cls(**{key: value for key, value in values.items() if key in names})


# The book's RNN settings (d2l, "Concise Implementation of RNNs"): hidden 32,
# batch 1024, 32 steps, plain SGD with lr 1, 100 epochs on its 10,000-window split.
D2L_PRESET = dict(
    num_hiddens=32, num_layers=1, dropout=0.0, input_dropout=0.0, recurrent_dropout=0.0, batch_size=1024, num_steps=32,
    optimizer="sgd", lr=1.0, lr_schedule="constant", weight_decay=0.0, grad_clip=1.0,
    epochs=100, batching="random", preprocess="d2l", split="d2l", patience=0,
)
