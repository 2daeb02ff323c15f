"""Generate text from a checkpoint.

    python -m model.generate --checkpoint checkpoints/lstm --prefix "the time traveller"
"""

import argparse
import logging
import sys

from model.checkpoint import CheckpointError
from model.pretrained import load
from model.sampling import sample

log = logging.getLogger("generate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Print a prefix followed by text sampled from a trained model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory")
    parser.add_argument("--prefix", default="the time traveller",
                        help="text to start from; it goes through the checkpoint's "
                             "preprocessing, and characters outside its vocabulary are dropped")
    parser.add_argument("--num-chars", type=int, default=200, help="characters to generate")
    parser.add_argument("--temperature", type=float, default=0.8,
                        help="sampling temperature: 0 = always the most likely character "
                             "(greedy), below 1 more predictable, above 1 more random")
    parser.add_argument("--top-k", type=int, default=0,
                        help="sample only among the k most likely characters, 0 = off")
    parser.add_argument("--top-p", type=float, default=1.0,
                        help="sample only from the smallest set of characters whose "
                             "probability reaches p, 1 = off")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling key")
    return parser


def check_args(args) -> None:
    if args.num_chars < 0:
        raise ValueError(f"--num-chars must be 0 or more, got {args.num_chars}")
    if not args.temperature >= 0 or args.temperature == float("inf"):
        raise ValueError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    if args.top_k < 0:
        raise ValueError(f"--top-k must be 0 (off) or positive, got {args.top_k}")
    if not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")
    if not 0 <= args.seed < 2**32:
        raise ValueError(f"--seed must be in [0, 2**32), got {args.seed}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s", force=True)
    logging.getLogger("absl").setLevel(logging.ERROR)
    log.setLevel(logging.INFO)  # the step loaded goes to stderr; stdout is only the text
    try:
        check_args(args)
        pretrained = load(args.checkpoint)
    except ValueError as error:
        log.error("%s", error)
        return 2
    except CheckpointError as error:
        log.error("%s", error)
        return 1
    log.info("loaded step %d of %s", pretrained.step, pretrained.directory)
    result = sample(pretrained.params, pretrained.model_config, pretrained.vocab,
                    pretrained.preprocess, args.prefix, args.num_chars, seed=args.seed,
                    temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    if result.prefix.removed:
        log.warning("dropped characters the model does not know: %r", result.prefix.removed)
    print(result.prefix.text + result.text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
