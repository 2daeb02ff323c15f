"""Score a checkpoint on the validation or test part of a corpus.

    python -m model.evaluate --checkpoint checkpoints/lstm --data ../shared/data/timemachine.txt

The corpus is rebuilt with the checkpoint's own preprocessing, vocabulary and
split. On the `full` split the part is read as one continuous stream with the
carry passed from window to window. On the `d2l` split each of the book's
validation windows starts from a zero carry and the loss is averaged over them.
"""

import argparse
import json
import logging
import os
import pathlib
import sys

from model.checkpoint import CheckpointError
from model.data import (D2L_NUM_TRAIN, D2L_NUM_VAL, CorpusError, build_corpus, find_corpus,
                        preprocess, read_corpus)
from model.pretrained import load
from model.train_lib import Score, evaluate

log = logging.getLogger("evaluate")
SCORES_FILE = "scores.json"


def save_score(directory: pathlib.Path, split_part: str, result: dict) -> pathlib.Path:
    """Merge one split's score into the checkpoint's scores file (atomically replaced).

    A scores file that is not a JSON object is replaced.
    """
    path = directory / SCORES_FILE
    scores = read_scores(directory)
    # The folder may move (a clone, a Space), so its absolute path is not recorded.
    scores[split_part] = {key: value for key, value in result.items() if key != "checkpoint"}
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(scores, indent=2) + "\n")
    partial.replace(path)
    return path


def read_scores(directory: pathlib.Path) -> dict:
    """Return a checkpoint's recorded scores, or {} when none were saved or the file is damaged."""
    path = pathlib.Path(directory) / SCORES_FILE
    try:
        scores = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return scores if isinstance(scores, dict) else {}


def score_checkpoint(pretrained, text: str, split_part: str) -> Score:
    """Score the `split_part` ("val" or "test") of `text` with a loaded model.

    Raises CorpusError when the text shares (almost) no characters with the
    checkpoint's vocabulary or its part is too short to score.
    """
    config = pretrained.train_config
    known = sum(char in pretrained.vocab for char in preprocess(text, config.preprocess))
    if known < 2:
        raise CorpusError(
            f"{known} of its characters after {config.preprocess} preprocessing are in the "
            f"checkpoint's vocabulary {''.join(pretrained.vocab.chars)!r}, and at least 2 are "
            "needed; pass a text written with the characters the model was trained on")
    if config.split == "d2l" and split_part == "test":
        raise CorpusError("the d2l split has no test part; use --split val")
    needed = D2L_NUM_TRAIN + D2L_NUM_VAL + config.num_steps
    if config.split == "d2l" and known < needed:
        raise CorpusError(
            f"the checkpoint uses the d2l split, which needs {needed} characters of its "
            f"vocabulary after preprocessing, and the text has {known}; pass a longer text")
    corpus = build_corpus(text, config.preprocess, config.split, config.num_steps,
                          vocab=pretrained.vocab)
    ids = corpus.val if split_part == "val" else corpus.test
    if len(ids) < 2:
        raise CorpusError(
            f"its {split_part} part ({config.split} split) has {len(ids)} characters and at "
            "least 2 are needed; pass a longer text")
    return evaluate(pretrained.params, pretrained.model_config, ids, config.split,
                    config.num_steps)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Print perplexity and bits per character of a checkpoint on a corpus split.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory")
    parser.add_argument("--data", help="UTF-8 text file; default: the Time Machine from the cache "
                                       "(downloaded if missing)")
    parser.add_argument("--data-dir", help="cache folder for the Time Machine")
    parser.add_argument("--split", choices=("val", "test"), default="test",
                        help="which part of the checkpoint's split to score")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object with perplexity, bits_per_char, num_chars")
    parser.add_argument("--save", action="store_true",
                        help=f"also record the score in <checkpoint>/{SCORES_FILE}, where the "
                             "app's model card reads it")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s", force=True)
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        pretrained = load(args.checkpoint)
        if args.save and not os.access(pretrained.directory, os.W_OK):
            raise CheckpointError(f"--save cannot write to {pretrained.directory}; make the "
                                  "folder writable or leave --save out")
        data = find_corpus(args.data, args.data_dir)
        text = read_corpus(data)
    except (CheckpointError, CorpusError) as error:
        log.error("%s", error)
        return 1
    except OSError as error:
        log.error("%s; check that the file exists and that you may read it", error)
        return 1
    try:
        score = score_checkpoint(pretrained, text, args.split)
    except CorpusError as error:
        log.error("cannot score %s: %s", data, error)
        return 1
    result = {"perplexity": score.perplexity, "bits_per_char": score.bits_per_char,
              "num_chars": score.num_chars, "split": args.split,
              "checkpoint": str(pretrained.directory), "step": pretrained.step}
    if args.save:
        try:
            save_score(pretrained.directory, args.split, result)
        except OSError as error:
            log.error("--save failed: %s; make the folder writable or leave --save out", error)
            return 1
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{pretrained.name} (step {pretrained.step}) on the {args.split} part: perplexity "
              f"{score.perplexity:.3f}, {score.bits_per_char:.3f} bits per character, "
              f"{score.num_chars:,} characters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
