"""Measure generation speed at batch 1 for every shipped model against the book's predict loop.

    python benchmarks/generation_speed.py
    taskset -c 1 python benchmarks/generation_speed.py --num-chars 1000 --book-chars 20

For each checkpoint under checkpoints/ (or --checkpoint-root):

- this project: `model.sampling.generate_ids` (one jitted call that warms the
  carry up on the prefix and samples every character in `lax.scan`),
  temperature 0.8, after a compiling call. Characters per second is
  --num-chars divided by the call's wall time; the latency to the first
  character is the wall time of the same call with one character. Measured
  with each way of computing a step (`model.sampling.STEPS`): "reference"
  (the default), "gates" and "fused";
- the book's predict loop, re-implemented: one un-jitted `model.apply` of the
  reference model per character (prefix characters included), then an argmax
  on the host, as the d2l book's `predict` does.

With --app, it also times the app's generation path in this process: the
Generate tab's streaming handler (`webapp.generate_tab.stream_generate`), from
the call until the first update that shows a generated character, at the
"instant" and the default reveal speed. The handler samples in pieces of 64
characters, so its first update waits for one piece of each model.
"""

import argparse
import logging
import pathlib
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks.common import (ROOT, HelpFormatter, machine_info,  # noqa: E402
                               usable_cores, write_json)
from model import cell_math, pretrained  # noqa: E402
from model.rnn import build_model  # noqa: E402
from model.sampling import STEPS, generate_ids, pad_prefix, prepare_prefix  # noqa: E402

PREFIX = "the time traveller"
TEMPERATURE = 0.8


def time_calls(function, repeats: int) -> list[float]:
    """Return the wall times of `repeats` calls of `function()` (which must block), in seconds."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return times


def project_speed(model, num_chars: int, repeats: int, step: str) -> dict:
    """Time `generate_ids` for `num_chars` characters and for one character, after compiling."""
    vocab, config, params = model.vocab, model.model_config, model.params
    ids = vocab.encode(prepare_prefix(PREFIX, vocab, model.preprocess).primer)

    def run(count):
        def call():
            new_ids, _ = generate_ids(params, config, pad_prefix(ids), jnp.int32(len(ids)),
                                      jax.random.PRNGKey(0), jnp.float32(TEMPERATURE),
                                      jnp.int32(0), jnp.float32(1.0), num_chars=count,
                                      step=step)
            new_ids.block_until_ready()
        return call

    started = time.perf_counter()
    run(num_chars)()
    compile_seconds = time.perf_counter() - started
    run(1)()
    full = time_calls(run(num_chars), repeats)
    first = time_calls(run(1), repeats)
    return {"chars_per_sec": num_chars / statistics.median(full),
            "best_chars_per_sec": num_chars / min(full),
            "first_char_ms": 1000 * statistics.median(first),
            "compile_seconds": compile_seconds, "num_chars": num_chars}


def matvec_floor(model, repeats: int, steps: int = 200) -> dict:
    """Time only the matrix-vector products of one character, chained over `steps` steps.

    The kernels are those a generation step multiplies by: each gate's hidden
    kernel, the input kernels of layers above the first, and the head. Each is
    multiplied in turn by a vector that depends on the previous product, so
    nothing can be hoisted or run ahead. The first layer's input kernels are left
    out, because a step reads only one of their rows. The result is the floor
    that reading the weights sets.
    """
    config, params = model.model_config, model.params
    if config.cell == "scratch":
        kernels = [params["W_hh"], params["W_hq"]]
    else:
        kernels = []
        for layer in range(config.num_layers):
            names = cell_math.HIDDEN_DENSES[config.cell]
            if layer > 0:
                names = cell_math.INPUT_DENSES[config.cell] + names
            kernels += [params[f"layer{layer}"][name]["kernel"] for name, _ in names]
        kernels.append(params["head"]["kernel"])
    num_bytes = sum(kernel.size * kernel.dtype.itemsize for kernel in kernels)
    hidden_size = config.num_hiddens

    @jax.jit
    def chain(kernels, vector):
        def step(vector, _):
            total = 0.0
            for kernel in kernels:
                output = vector[:, :kernel.shape[0]] @ kernel  # (1, H) or (1, V)
                total = total + jnp.sum(output)
            return jnp.tanh(vector + total * 1e-6), None
        return jax.lax.scan(step, vector, None, length=steps)[0]

    vector = jnp.full((1, hidden_size), 0.1, jnp.float32)
    chain(kernels, vector).block_until_ready()
    seconds = min(time_calls(lambda: chain(kernels, vector).block_until_ready(), repeats))
    per_char = seconds / steps
    return {"weight_bytes_per_char": num_bytes, "us_per_char": 1e6 * per_char,
            "chars_per_sec": 1.0 / per_char, "gbytes_per_sec": num_bytes / per_char / 1e9}


def book_predict_speed(model, num_preds: int) -> dict:
    """Time the book's predict loop: one un-jitted `apply` per character, greedy, on the host."""
    vocab, config, params = model.vocab, model.model_config, model.params
    network = build_model(config, reference=True)
    prefix = prepare_prefix(PREFIX, vocab, model.preprocess).primer
    outputs = [int(vocab.encode(prefix[0])[0])]
    carry = None
    call_times = []
    for index in range(len(prefix) + num_preds - 1):
        started = time.perf_counter()
        inputs = jnp.array([[outputs[-1]]], jnp.int32)  # (1, 1)
        carry, logits = network.apply({"params": params}, inputs, carry)
        if index < len(prefix) - 1:
            outputs.append(int(vocab.encode(prefix[index + 1])[0]))
        else:
            outputs.append(int(jnp.argmax(logits[0, 0])))
        call_times.append(time.perf_counter() - started)
    per_char = statistics.median(call_times)
    return {"chars_per_sec": 1.0 / per_char, "ms_per_char": 1000 * per_char,
            "first_char_ms": 1000 * sum(call_times[:len(prefix)]), "calls": len(call_times),
            "text": vocab.decode(np.array(outputs[len(prefix):]))}


def app_first_char(root: pathlib.Path, repeats: int) -> dict:
    """Time the Generate tab's streaming handler until its first update with a generated character."""
    from webapp.generate_tab import DEFAULT_SPEED, stream_generate
    from webapp.models import load_models, warm_up

    models = load_models(root)
    warm_up(models)
    cell = models.default_name()
    results = {"cell": cell}
    for speed in ("instant", DEFAULT_SPEED):
        times = []
        for seed in range(repeats):
            started = time.perf_counter()
            updates = stream_generate(models, cell, PREFIX, 300, TEMPERATURE, 0, seed, speed, True)
            for update in updates:
                if 'title="p = ' in update[5]:  # the trained panel shows a generated character
                    times.append(time.perf_counter() - started)
                    break
            updates.close()
        results[speed] = {"median_ms": 1000 * statistics.median(times),
                          "max_ms": 1000 * max(times), "requests": len(times)}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--checkpoint-root", default=str(ROOT / "checkpoints"),
                        help="folder whose run folders are measured")
    parser.add_argument("--models", nargs="*",
                        help="run folder names to measure; when omitted, every one under the root")
    parser.add_argument("--num-chars", type=int, default=1000,
                        help="characters per timed generation call")
    parser.add_argument("--repeats", type=int, default=7,
                        help="timed calls per measurement; the median is reported")
    parser.add_argument("--book-chars", type=int, default=20,
                        help="characters the book's predict loop generates after the prefix")
    parser.add_argument("--app", action="store_true",
                        help="also time the app's streaming handler to its first character")
    parser.add_argument("--out", default="benchmarks/results/generation_speed.json",
                        help="JSON file for the results")
    args = parser.parse_args()
    logging.getLogger("absl").setLevel(logging.ERROR)  # Orbax warns on every read-only open

    root = pathlib.Path(args.checkpoint_root)
    results = {}
    for directory in sorted(path for path in root.iterdir()
                            if path.is_dir() and not path.name.endswith(".previous")):
        if args.models and directory.name not in args.models:
            continue
        try:
            model = pretrained.load(directory)
        except Exception as error:  # noqa: BLE001 (report any unloadable run and go on)
            print(f"skipping {directory.name}: {type(error).__name__}: {error}")
            continue
        print(f"  {directory.name} ...", flush=True)
        steps = {step: project_speed(model, args.num_chars, args.repeats, step)
                 for step in STEPS}
        book = book_predict_speed(model, args.book_chars)
        results[directory.name] = {"config": str(model.model_config),
                                   "project": steps["reference"],
                                   "steps": steps, "book_predict": book,
                                   "matvec_floor": matvec_floor(model, args.repeats)}

    print(f"\nbatch 1, temperature {TEMPERATURE}, prefix {PREFIX!r}, {args.num_chars} characters "
          f"per call, {usable_cores()} core(s)")
    print("chars/s: median (best) of the timed calls; first ms: one-character call, median")
    print("floor: the step's matrix-vector products alone (weights read per character, GB/s)")
    print(f"{'model':18} {'chars/s':>16} {'first ms':>9} {'gates chars/s':>14} "
          f"{'fused':>10} {'book ms/char':>13} {'x book':>8} {'floor chars/s':>22}")
    for name, row in results.items():
        speedup = row["project"]["chars_per_sec"] / row["book_predict"]["chars_per_sec"]
        row["speedup_vs_book"] = speedup
        project = row["project"]
        rate = f"{project['chars_per_sec']:,.0f} ({project['best_chars_per_sec']:,.0f})"
        print(f"{name:18} {rate:>16} {project['first_char_ms']:9.2f} "
              f"{row['steps']['gates']['chars_per_sec']:14,.0f} "
              f"{row['steps']['fused']['chars_per_sec']:10,.0f} "
              f"{row['book_predict']['ms_per_char']:13.1f} {speedup:8,.0f} "
              f"{row['matvec_floor']['chars_per_sec']:9,.0f} "
              f"({row['matvec_floor']['weight_bytes_per_char'] / 1e6:.2f} MB, "
              f"{row['matvec_floor']['gbytes_per_sec']:.0f})")

    app = None
    if args.app:
        app = app_first_char(root, args.repeats)
        for speed, row in app.items():
            if speed != "cell":
                print(f"app, {app['cell']}, reveal {speed!r}: first generated character after "
                      f"{row['median_ms']:.0f} ms (median of {row['requests']}, max "
                      f"{row['max_ms']:.0f} ms)")
    write_json(args.out, {"machine": machine_info(), "settings": vars(args),
                          "temperature": TEMPERATURE, "prefix": PREFIX, "results": results,
                          "app": app})
    return 0


if __name__ == "__main__":
    sys.exit(main())
