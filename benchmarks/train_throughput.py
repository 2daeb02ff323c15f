"""Measure training throughput in characters per second against the book's pipeline and PyTorch.

    python benchmarks/train_throughput.py
    taskset -c 1 python benchmarks/train_throughput.py --config lstm --rounds 7 --ablation

Two configurations, each trained on the same text by every pipeline:

- book: the d2l book's RNN (tanh, 32 hidden units, batch 1024, num_steps 32,
  SGD with lr 1) on the book's 10,000 overlapping training windows;
- lstm: a one-layer LSTM of 256 units, batch 128, num_steps 100, Adam.

Pipelines:

- this project: `model.train_lib.make_train_chunk`, the train step that
  `train.py` runs, fed the way `model/trainer.py` feeds it;
- this project's from-scratch RNN (book configuration only);
- a re-implementation of the book's pipeline: one-hot input, `nn.scan` over
  the Flax cell, one jitted step per batch from a Python loop, no clipping;
- PyTorch's `nn.RNN` / `nn.LSTM` on the CPU, skipped with a message when torch
  is not installed.

Throughput is characters per second over whole epochs after the first one,
which includes compilation: the median over --rounds turns, in which the
pipelines take turns, and the best turn. The compile time reported is the
first epoch's time minus a steady epoch's. FLOPs per character count the matrix products
only, each (m, k) @ (k, n) as 2mkn: 3 x (2VG + 2HG + 2HV) for one layer, with
G = H (rnn) or 4H (lstm), because the backward pass costs two forward passes.
The input product is counted as a dense one-hot product even where a
pipeline gathers rows instead. The machine's peak is the fastest jitted fp32
square matrix product of sizes 256 to 2048 (`benchmarks.common.matmul_peak`),
measured in the same run.
"""

import argparse
import contextlib
import dataclasses
import pathlib
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from benchmarks.common import (HelpFormatter, benchmark_text, machine_info,  # noqa: E402
                               matmul_peak, usable_cores, write_json)
from model import train_lib  # noqa: E402
from model.batching import epoch_batches  # noqa: E402
from model.config import D2L_PRESET, ModelConfig, TrainConfig  # noqa: E402
from model.data import build_corpus  # noqa: E402
from model.rnn import RNNLM, train_unroll, zero_carry  # noqa: E402
from model.trainer import epoch_rng  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Setting:
    """One benchmark configuration, shared by every pipeline."""

    name: str
    cell: str  # "rnn" or "lstm"
    num_hiddens: int
    batch_size: int
    num_steps: int
    optimizer: str  # "sgd" or "adam"
    lr: float
    split: str  # "d2l": the book's overlapping windows; "full": 90% of the text


SETTINGS = {
    "book": Setting("book", "rnn", 32, 1024, 32, "sgd", 1.0, "d2l"),
    "lstm": Setting("lstm", "lstm", 256, 128, 100, "adam", 2e-3, "full"),
}

# Variants of this project's layers for --ablation: RNNLM fields, each changing speed only.
ABLATIONS = {
    "reference layers (one-hot, nn.scan over the Flax cell)": dict(reference=True),
    "one-hot product instead of a row gather": dict(gather_input=False),
    "one product per gate": dict(gates_per_product=1),
    "two gates per product": dict(gates_per_product=2),
    "all gates in one product": dict(gates_per_product=4),
    "output layer over (B, T, H) instead of (B * T, H)": dict(flat_head=False),
    "one time step per loop iteration (unroll 1)": dict(unroll=1),
    "unroll 4": dict(unroll=4),
}


def flops_per_char(setting: Setting, vocab_size: int) -> int:
    """Count the matrix-product FLOPs of one training character (see the module docstring)."""
    hidden = setting.num_hiddens
    gates = 4 * hidden if setting.cell == "lstm" else hidden
    forward = 2 * vocab_size * gates + 2 * hidden * gates + 2 * hidden * vocab_size
    return 3 * forward


@contextlib.contextmanager
def project_layers(**fields):
    """Make `make_train_chunk` build `RNNLM` with `fields` (the --ablation variants)."""
    original = train_lib.build_model
    train_lib.build_model = lambda config, unroll=1: RNNLM(config, **{"unroll": unroll, **fields})
    try:
        yield
    finally:
        train_lib.build_model = original


class ProjectPipeline:
    """This project's train step, fed as `model/trainer.py` feeds it: K steps per jitted call."""

    def __init__(self, setting: Setting, corpus, cell: str, layer_fields: dict | None = None):
        if setting.split == "d2l":
            preset = {key: value for key, value in D2L_PRESET.items()
                      if key in {field.name for field in dataclasses.fields(TrainConfig)}}
            self.train_config = TrainConfig(**preset)
        else:
            self.train_config = TrainConfig(
                batch_size=setting.batch_size, num_steps=setting.num_steps,
                optimizer=setting.optimizer, lr=setting.lr, lr_schedule="constant",
                batching="sequential", split="full")
        self.model_config = ModelConfig(vocab_size=len(corpus.vocab), cell=cell,
                                        num_hiddens=setting.num_hiddens)
        self.corpus = corpus
        tx = train_lib.make_optimizer(self.train_config, steps_per_epoch=100)
        self.carry_over = self.train_config.batching == "sequential" and setting.split != "d2l"
        with project_layers(**layer_fields) if layer_fields else contextlib.nullcontext():
            self.train_chunk = train_lib.make_train_chunk(
                self.model_config, tx, self.carry_over,
                unroll=train_unroll(self.model_config, self.train_config.num_steps))
        self.state = train_lib.create_state(self.model_config, self.train_config, tx)
        self.epoch_index = 0

    def run_epoch(self) -> int:
        config = self.train_config
        batches = epoch_batches(self.corpus.train, config.batching, config.split,
                                config.batch_size, config.num_steps,
                                epoch_rng(config.seed, self.epoch_index))
        self.epoch_index += 1
        carry = zero_carry(self.model_config, config.batch_size)
        for begin in range(0, len(batches), config.steps_per_call):
            end = min(begin + config.steps_per_call, len(batches))
            self.state, carry, metrics = self.train_chunk(
                self.state, carry, batches.inputs[begin:end], batches.targets[begin:end],
                batches.mask[begin:end])
            float(np.sum(metrics["loss_sum"]))  # the trainer reads the loss after every call
        return int(batches.mask.sum())


def book_windows(ids: np.ndarray, setting: Setting, rng: np.random.Generator) -> np.ndarray:
    """Return one epoch's (N, T + 1) windows, shuffled: the book's overlapping ones for `d2l`."""
    steps = setting.num_steps
    if setting.split == "d2l":
        starts = np.arange(len(ids) - steps)
    else:
        offset = int(rng.integers(steps))
        starts = offset + steps * np.arange((len(ids) - offset - 1) // steps)
    return ids[rng.permutation(starts)[:, None] + np.arange(steps + 1)]


class BookLM(nn.Module):
    """The book's concise model: one-hot input, `nn.scan` over a Flax cell (time-major), a Dense head."""

    vocab_size: int
    num_hiddens: int
    cell: type

    @nn.compact
    def __call__(self, ids):  # ids: int32 (B, T)
        embeddings = jax.nn.one_hot(ids.T, self.vocab_size)  # (T, B, V)
        # A zeros carry does not depend on the key, so a fixed one is fine.
        carry = self.cell(features=self.num_hiddens).initialize_carry(
            jax.random.PRNGKey(0), embeddings[0].shape)
        layer = nn.scan(self.cell, variable_broadcast="params", split_rngs={"params": False},
                        in_axes=0, out_axes=0)(features=self.num_hiddens)
        _, outputs = layer(carry, embeddings)  # (T, B, H)
        return nn.Dense(self.vocab_size)(outputs).swapaxes(0, 1)  # (B, T, V)


class BookPipeline:
    """The book's training loop: shuffled windows, one jitted step per batch, no clipping."""

    def __init__(self, setting: Setting, ids: np.ndarray, vocab_size: int):
        self.setting, self.ids = setting, ids
        cell = nn.SimpleCell if setting.cell == "rnn" else nn.LSTMCell
        model = BookLM(vocab_size, setting.num_hiddens, cell)
        self.params = model.init(jax.random.PRNGKey(0),
                                 jnp.zeros((1, setting.num_steps), jnp.int32))["params"]
        tx = optax.sgd(setting.lr) if setting.optimizer == "sgd" else optax.adam(setting.lr)
        self.opt_state = tx.init(self.params)
        self.rng = np.random.default_rng(0)

        @jax.jit
        def train_step(params, opt_state, inputs, targets):
            def loss_fn(params):
                logits = model.apply({"params": params}, inputs)
                return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        self.train_step = train_step

    def run_epoch(self) -> int:
        windows = book_windows(self.ids, self.setting, self.rng)
        loss = None
        for begin in range(0, len(windows), self.setting.batch_size):
            batch = windows[begin:begin + self.setting.batch_size]
            self.params, self.opt_state, loss = self.train_step(
                self.params, self.opt_state, jnp.asarray(batch[:, :-1]), jnp.asarray(batch[:, 1:]))
        loss.block_until_ready()
        return windows.shape[0] * self.setting.num_steps


class TorchPipeline:
    """PyTorch `nn.RNN` / `nn.LSTM` with one-hot input, the book's loop, clipping at 1 as this project."""

    def __init__(self, setting: Setting, ids: np.ndarray, vocab_size: int, torch):
        self.torch, self.setting, self.ids, self.vocab_size = torch, setting, ids, vocab_size
        torch.manual_seed(0)
        recurrent = torch.nn.RNN if setting.cell == "rnn" else torch.nn.LSTM
        self.rnn = recurrent(vocab_size, setting.num_hiddens)
        self.head = torch.nn.Linear(setting.num_hiddens, vocab_size)
        parameters = list(self.rnn.parameters()) + list(self.head.parameters())
        self.parameters = parameters
        self.optimizer = (torch.optim.SGD(parameters, lr=setting.lr) if setting.optimizer == "sgd"
                          else torch.optim.Adam(parameters, lr=setting.lr))
        self.rng = np.random.default_rng(0)

    def run_epoch(self) -> int:
        torch, functional = self.torch, self.torch.nn.functional
        windows = torch.from_numpy(book_windows(self.ids, self.setting, self.rng).astype(np.int64))
        for begin in range(0, len(windows), self.setting.batch_size):
            batch = windows[begin:begin + self.setting.batch_size]
            inputs = functional.one_hot(batch[:, :-1].T, self.vocab_size).float()  # (T, B, V)
            outputs, _ = self.rnn(inputs)
            logits = self.head(outputs)  # (T, B, V)
            loss = functional.cross_entropy(logits.reshape(-1, self.vocab_size),
                                            batch[:, 1:].T.reshape(-1))
            self.optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.parameters, 1.0)
            self.optimizer.step()
        return windows.shape[0] * self.setting.num_steps


def measure(pipelines: list, rounds: int, round_seconds: float) -> list[dict]:
    """Time every pipeline in turns; return one row of throughput figures per pipeline.

    Each pipeline first runs one epoch, which compiles. Then, `rounds` times, each
    pipeline in turn runs whole epochs for at least `round_seconds`, so a slow spell
    of the machine falls on all of them alike.
    """
    built = []
    for label, build in pipelines:
        print(f"  compiling {label} ...", flush=True)
        pipeline = build()
        started = time.perf_counter()
        pipeline.run_epoch()
        built.append((label, pipeline, time.perf_counter() - started))
    rates = {label: [] for label, _, _ in built}
    epoch_seconds = {label: [] for label, _, _ in built}
    for _ in range(rounds):
        for label, pipeline, _ in built:
            chars, elapsed, epochs = 0, 0.0, 0
            while elapsed < round_seconds or epochs == 0:
                started = time.perf_counter()
                chars += pipeline.run_epoch()
                elapsed += time.perf_counter() - started
                epochs += 1
            rates[label].append(chars / elapsed)
            epoch_seconds[label].append(elapsed / epochs)
    rows = []
    for label, _, first_epoch in built:
        steady_epoch = statistics.median(epoch_seconds[label])
        rows.append({"pipeline": label, "chars_per_sec": statistics.median(rates[label]),
                     "best_chars_per_sec": max(rates[label]), "rounds": rates[label],
                     "steady_epoch_seconds": steady_epoch, "first_epoch_seconds": first_epoch,
                     "compile_seconds": max(0.0, first_epoch - steady_epoch)})
    return rows


def run_setting(setting: Setting, text: str, args, peak: float, torch) -> list[dict]:
    corpus = build_corpus(text, "d2l", setting.split, setting.num_steps)
    vocab_size = len(corpus.vocab)
    pipelines = [("this project", lambda: ProjectPipeline(setting, corpus, setting.cell))]
    if setting.cell == "rnn":
        pipelines.append(("this project, from-scratch RNN",
                          lambda: ProjectPipeline(setting, corpus, "scratch")))
    if args.ablation:
        for label, fields in ABLATIONS.items():
            pipelines.append((f"this project, {label}",
                              lambda fields=fields: ProjectPipeline(setting, corpus, setting.cell,
                                                                    fields)))
    pipelines.append(("book's pipeline (re-implemented)",
                      lambda: BookPipeline(setting, corpus.train, vocab_size)))
    if torch is not None:
        name = "nn.RNN" if setting.cell == "rnn" else "nn.LSTM"
        pipelines.append((f"PyTorch {torch.__version__} {name}",
                          lambda: TorchPipeline(setting, corpus.train, vocab_size, torch)))

    flops = flops_per_char(setting, vocab_size)
    rows = measure(pipelines, args.rounds, args.round_seconds)
    for row in rows:
        row["gflops_per_sec"] = row["chars_per_sec"] * flops / 1e9
        row["fraction_of_peak"] = row["chars_per_sec"] * flops / peak
    return rows, flops, vocab_size


def print_table(setting: Setting, rows: list[dict], flops: int, vocab_size: int) -> None:
    book = next(row for row in rows if row["pipeline"].startswith("book"))
    print(f"\n{setting.name}: {setting.cell}, {setting.num_hiddens} hidden, batch "
          f"{setting.batch_size}, num_steps {setting.num_steps}, {setting.optimizer} "
          f"(V = {vocab_size}, {flops:,} matmul FLOPs per character)")
    print("chars/s: median over the rounds (best round in brackets); compile s: first epoch "
          "minus a steady one")
    torch = next((row for row in rows if row["pipeline"].startswith("PyTorch")), None)
    width = max(len(row["pipeline"]) for row in rows)
    print(f"{'pipeline':{width}} {'chars/s':>22} {'x book':>7} {'x torch':>7} {'compile s':>9} "
          f"{'GFLOP/s':>8} {'% peak':>7}")
    for row in rows:
        rate = f"{row['chars_per_sec']:,.0f} ({row['best_chars_per_sec']:,.0f})"
        versus_torch = (f"{row['chars_per_sec'] / torch['chars_per_sec']:7.2f}" if torch
                        else f"{'-':>7}")
        print(f"{row['pipeline']:{width}} {rate:>22} "
              f"{row['chars_per_sec'] / book['chars_per_sec']:7.2f} {versus_torch} "
              f"{row['compile_seconds']:9.1f} {row['gflops_per_sec']:8.1f} "
              f"{100 * row['fraction_of_peak']:6.1f}%")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--config", choices=["book", "lstm", "all"], default="all",
                        help="which configuration to measure")
    parser.add_argument("--rounds", type=int, default=5,
                        help="timed turns per pipeline, after the compiling epoch")
    parser.add_argument("--round-seconds", type=float, default=2.0,
                        help="minimum seconds of whole epochs per pipeline and round")
    parser.add_argument("--ablation", action="store_true",
                        help="also measure this project with each optimization switched off")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    parser.add_argument("--data", help="training text; when omitted, "
                                       "../shared/data/timemachine.txt if present, else "
                                       "generated letters")
    parser.add_argument("--out", default="benchmarks/results/train_throughput.json",
                        help="JSON file for the results")
    args = parser.parse_args()
    if args.data and not pathlib.Path(args.data).is_file():
        parser.error(f"--data {args.data}: file not found")

    torch = None
    if not args.no_torch:
        try:
            import torch
            torch.set_num_threads(usable_cores())
        except ImportError:
            print("PyTorch is not installed, so its rows are skipped; install "
                  "benchmarks/requirements.txt in a separate environment to include them")
    text, source = benchmark_text(args.data)
    peak = matmul_peak()
    print(f"fp32 matmul peak (jitted square products, best size): {peak / 1e9:.1f} GFLOP/s "
          f"on {usable_cores()} core(s)")

    results = {}
    names = ["book", "lstm"] if args.config == "all" else [args.config]
    for name in names:
        setting = SETTINGS[name]
        rows, flops, vocab_size = run_setting(setting, text, args, peak, torch)
        print_table(setting, rows, flops, vocab_size)
        results[name] = {"setting": dataclasses.asdict(setting), "vocab_size": vocab_size,
                         "flops_per_char": flops, "rows": rows}
    write_json(args.out, {"machine": machine_info(), "text": source,
                          "matmul_peak_flops_per_sec": peak, "settings": vars(args),
                          "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
