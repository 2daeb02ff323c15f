"""Break one training batch down into its parts, to show where the time goes.

    python benchmarks/train_breakdown.py
    taskset -c 1 python benchmarks/train_breakdown.py --cell rnn --num-hiddens 32 --batch-size 1024 --num-steps 32 --optimizer sgd

Times in milliseconds per batch, each the best of --repeats jitted calls:

- the time loop's matrix products alone: T forward products h W_h and T
  backward products dG W_h^T, grouped as the fast layers group the gates and
  chained in a `lax.scan` with nothing else. This is the floor that the
  loop's step-to-step dependence leaves;
- the cell's elementwise work alone: the gate functions and their gradients
  over T steps, from given projections;
- the head alone: logits, softmax cross-entropy and their gradients;
- the model's loss and gradients, fast layers and reference layers;
- the full train step of `model.train_lib.make_train_chunk` (one step per call).
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from benchmarks.common import (HelpFormatter, best_time, machine_info,  # noqa: E402
                               matmul_peak, usable_cores, write_json)
from model import cell_math, train_lib  # noqa: E402
from model.config import ModelConfig, TrainConfig  # noqa: E402
from model.rnn import (build_model, default_gates_per_product, init_params,  # noqa: E402
                       train_unroll, zero_carry)

GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--cell", choices=list(GATES), default="lstm", help="recurrent cell")
    parser.add_argument("--num-hiddens", type=int, default=256, help="hidden units H")
    parser.add_argument("--batch-size", type=int, default=128, help="sequences per batch B")
    parser.add_argument("--num-steps", type=int, default=100, help="time steps T")
    parser.add_argument("--vocab-size", type=int, default=27, help="characters V")
    parser.add_argument("--optimizer", choices=["sgd", "adam"], default="adam",
                        help="optimizer of the full train step")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per part")
    parser.add_argument("--out", default="benchmarks/results/train_breakdown.json",
                        help="JSON file for the results")
    args = parser.parse_args()

    B, T, V, H = args.batch_size, args.num_steps, args.vocab_size, args.num_hiddens
    G = GATES[args.cell] * H
    per_product = default_gates_per_product(args.cell, H)  # what the fast layers use here
    keys = iter(jax.random.split(jax.random.PRNGKey(0), 16))

    def normal(*shape):
        return jax.random.normal(next(keys), shape, jnp.float32) * 0.1

    def timed(function, *operands) -> float:
        jitted = jax.jit(function)
        jax.block_until_ready(jitted(*operands))
        return 1000 * best_time(lambda: jax.block_until_ready(jitted(*operands)), args.repeats)

    parts = {}
    group_width = min(G, per_product * H)
    kernels = [normal(H, group_width) for _ in range(G // group_width)]

    def loop_products(kernels, h0):
        def step(h, _):
            forward = jnp.concatenate([h @ kernel for kernel in kernels], axis=-1)  # (B, G)
            backward = sum(forward[:, i * group_width:(i + 1) * group_width] @ kernel.T
                           for i, kernel in enumerate(kernels))  # (B, H)
            return jnp.tanh(backward), None
        return jax.lax.scan(step, h0, None, length=T)[0]
    parts["loop matmuls only (T forward + T backward products)"] = timed(
        loop_products, kernels, normal(B, H))

    update = cell_math.CELL_UPDATES[args.cell]
    start = (normal(B, H), normal(B, H)) if args.cell == "lstm" else normal(B, H)

    def elementwise(x_proj, h_proj):
        def total(x_proj, h_proj):
            def step(state, projections):
                state = update(*projections, state)
                return state, cell_math.hidden(state)
            return jnp.sum(jax.lax.scan(step, start, (x_proj, h_proj))[1])
        return jax.grad(total, argnums=(0, 1))(x_proj, h_proj)
    parts["cell elementwise only (gates and their gradients)"] = timed(
        elementwise, normal(T, B, G), normal(T, B, G))

    targets = jax.random.randint(next(keys), (B, T), 0, V)

    def head(hs, kernel, bias):
        def loss_fn(hs, kernel, bias):
            logits = (hs.reshape(B * T, H) @ kernel + bias).reshape(B, T, V)  # as RNNLM does
            return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
        return jax.grad(loss_fn, argnums=(0, 1, 2))(hs, kernel, bias)
    parts["head only (logits, cross-entropy, gradients)"] = timed(
        head, normal(B, T, H), normal(H, V), normal(V))

    config = ModelConfig(vocab_size=V, cell=args.cell, num_hiddens=H)
    params = init_params(config, seed=0)
    ids = jax.random.randint(next(keys), (B, T), 0, V)
    for label, reference in (("fast layers", False), ("reference layers", True)):
        model = build_model(config, reference=reference,
                            unroll=1 if reference else train_unroll(config, T))

        def loss_grads(params, ids, model=model):
            def loss_fn(params):
                _, logits = model.apply({"params": params}, ids)
                return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
            return jax.grad(loss_fn)(params)
        parts[f"model loss + gradients, {label}"] = timed(loss_grads, params, ids)

    train_config = TrainConfig(batch_size=B, num_steps=T, optimizer=args.optimizer,
                               lr_schedule="constant")
    tx = train_lib.make_optimizer(train_config, steps_per_epoch=100)
    chunk = train_lib.make_train_chunk(config, tx, carry_over=True,
                                       unroll=train_unroll(config, T))
    state = train_lib.create_state(config, train_config, tx)
    batch = (ids[None], targets[None], jnp.ones((1, B, T), jnp.float32))
    carry = zero_carry(config, B)
    jax.block_until_ready(chunk(state, carry, *batch))
    parts["full train step (make_train_chunk, one step per call)"] = 1000 * best_time(
        lambda: jax.block_until_ready(chunk(state, carry, *batch)), args.repeats)

    peak = matmul_peak()
    loop_flops = 2 * T * 2 * B * H * G
    loop_ms = parts["loop matmuls only (T forward + T backward products)"]
    loop_rate = loop_flops / (loop_ms / 1000)
    print(f"{args.cell}, H {H}, B {B}, T {T}, V {V}, {G // group_width} product(s) per step, "
          f"{usable_cores()} core(s); matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(f"{'part':58} {'ms/batch':>9} {'us/char':>8}")
    for name, milliseconds in parts.items():
        print(f"{name:58} {milliseconds:9.1f} {1000 * milliseconds / (B * T):8.2f}")
    print(f"the loop's products alone run at {loop_rate / 1e9:.1f} GFLOP/s, "
          f"{100 * loop_rate / peak:.0f}% of the peak")
    write_json(args.out, {"machine": machine_info(), "settings": vars(args),
                          "matmul_peak_flops_per_sec": peak, "ms_per_batch": parts,
                          "loop_matmul_flops_per_sec": loop_rate})
    return 0


if __name__ == "__main__":
    sys.exit(main())
