import jax
import numpy as np
import pytest

from model.config import ModelConfig
from model.data import Vocab
from model.rnn import init_params
from model.sampling import (PREFIX_BUCKET, generate_ids, prepare_prefix, read_prefix, sample,
                            sample_more)

VOCAB = Vocab.from_text("abcdefghijklmnopqrstuvwxyz ")
CONFIG = ModelConfig(vocab_size=len(VOCAB), cell="lstm", num_hiddens=16)


@pytest.fixture(scope="module")
def params():
    # Scale the initial weights up so the untrained model has peaked, non-uniform outputs.
    return jax.tree_util.tree_map(lambda leaf: leaf * 4.0, init_params(CONFIG, seed=0))


def generate(params, prefix="the time", num_chars=30, **kwargs):
    return sample(params, CONFIG, VOCAB, "d2l", prefix, num_chars, **kwargs)


def test_returns_requested_number_of_chars(params):
    result = generate(params, num_chars=37, temperature=1.0)
    assert len(result.text) == 37
    assert result.log_probs.shape == (37,)
    assert np.all(result.log_probs <= 0)


def test_greedy_is_deterministic_and_ignores_seed(params):
    first = generate(params, temperature=0.0, seed=1)
    second = generate(params, temperature=0.0, seed=2)
    assert first.text == second.text


def test_same_seed_same_text_other_seed_other_text(params):
    first = generate(params, temperature=1.0, seed=5)
    again = generate(params, temperature=1.0, seed=5)
    other = generate(params, temperature=1.0, seed=6)
    assert first.text == again.text
    assert first.text != other.text


def test_top_k_one_equals_greedy(params):
    greedy = generate(params, temperature=0.0)
    top1 = generate(params, temperature=1.5, top_k=1, seed=9)
    assert top1.text == greedy.text


def test_tiny_temperature_approaches_greedy(params):
    greedy = generate(params, temperature=0.0)
    cold = generate(params, temperature=1e-4, seed=3)
    assert cold.text == greedy.text


def test_tiny_top_p_equals_greedy(params):
    greedy = generate(params, temperature=0.0)
    nucleus = generate(params, temperature=1.0, top_p=1e-6, seed=4)
    assert nucleus.text == greedy.text


def test_top_k_limits_choices(params):
    from model.rnn import build_model
    prefix_ids = VOCAB.encode("the time")
    _, logits = build_model(CONFIG).apply({"params": params}, prefix_ids[None, :])
    top3 = set(np.argsort(np.asarray(logits[0, -1]))[-3:].tolist())
    firsts = set()
    for seed in range(40):
        ids, _ = generate_ids(params, CONFIG, np.pad(prefix_ids, (0, PREFIX_BUCKET - 8)),
                              np.int32(8), jax.random.PRNGKey(seed), np.float32(2.0),
                              np.int32(3), np.float32(1.0), num_chars=1)
        firsts.add(int(ids[0]))
    assert firsts <= top3
    assert len(firsts) > 1  # temperature 2 spreads the draws over the three candidates


@pytest.mark.parametrize("prefix, seen, removed", [
    ("The Time-Traveller!", "the time traveller ", ""),
    ("", "", ""),
    (None, "", ""),
    ("1984 🙂", " ", ""),
])
def test_prefix_goes_through_d2l_preprocessing(prefix, seen, removed):
    prepared = prepare_prefix(prefix, VOCAB, "d2l")
    assert prepared.text == seen
    assert prepared.removed == removed
    assert prepared.primer  # never empty: an empty prefix is primed with a boundary char


def test_raw_prefix_drops_unknown_chars():
    prepared = prepare_prefix("héllo wörld\x00", VOCAB, "raw")
    assert prepared.text == "hllo wrld"
    assert prepared.removed == "é\xf6\x00"


def test_empty_prefix_generates(params):
    result = generate(params, prefix="", num_chars=10, temperature=0.0)
    assert len(result.text) == 10
    assert set(result.text) <= set(VOCAB.chars)


def test_prefix_lengths_share_one_compile(params):
    generate(params, prefix="a", num_chars=11, temperature=0.0)
    before = generate_ids._cache_size()
    for prefix in ("ab", "the time traveller", "x" * (PREFIX_BUCKET - 1)):
        generate(params, prefix=prefix, num_chars=11, temperature=0.5)
    assert generate_ids._cache_size() == before


def test_long_prefix_is_accepted(params):
    result = generate(params, prefix="time " * 500, num_chars=5)
    assert len(result.text) == 5


def test_zero_chars_returns_empty(params):
    assert generate(params, num_chars=0).text == ""


@pytest.mark.parametrize("cell, num_layers", [("rnn", 2), ("gru", 2), ("lstm", 2), ("scratch", 1)])
@pytest.mark.parametrize("step", ["gates", "fused"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_fast_steps_generate_reference_text(cell, num_layers, step, temperature):
    config = ModelConfig(vocab_size=len(VOCAB), cell=cell, num_hiddens=16, num_layers=num_layers)
    params = jax.tree_util.tree_map(lambda leaf: leaf * 4.0, init_params(config, seed=1))
    padded = np.pad(VOCAB.encode("the time"), (0, PREFIX_BUCKET - 8))
    outputs = {}
    for how in (step, "reference"):
        outputs[how] = generate_ids(params, config, padded, np.int32(8), jax.random.PRNGKey(2),
                                    np.float32(temperature), np.int32(0), np.float32(1.0),
                                    num_chars=40, step=how)
    np.testing.assert_array_equal(outputs[step][0], outputs["reference"][0])
    np.testing.assert_allclose(outputs[step][1], outputs["reference"][1], rtol=1e-5, atol=1e-5)
    assert len(set(np.asarray(outputs[step][0]).tolist())) > 1  # not one repeated character


def test_unknown_step_is_rejected(params):
    with pytest.raises(ValueError, match="step must be one of"):
        generate_ids(params, CONFIG, np.zeros(PREFIX_BUCKET, np.int32), np.int32(1),
                     jax.random.PRNGKey(0), np.float32(1.0), np.int32(0), np.float32(1.0),
                     num_chars=2, step="fast")


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_pieces_continue_one_call(params, temperature):
    padded = np.pad(VOCAB.encode("the time"), (0, PREFIX_BUCKET - 8))
    settings = (np.float32(temperature), np.int32(0), np.float32(1.0))
    key = jax.random.PRNGKey(7)
    whole_ids, whole_log_probs = generate_ids(params, CONFIG, padded, np.int32(8), key,
                                              *settings, num_chars=30)
    state = read_prefix(params, CONFIG, padded, np.int32(8))
    keys = jax.random.split(key, 40)  # more keys than characters: the first 30 are the same
    pieces = []
    for begin in (0, 10, 20):
        state, ids, log_probs = sample_more(params, CONFIG, state, keys[begin:begin + 10],
                                            *settings)
        pieces.append((ids, log_probs))
    np.testing.assert_array_equal(np.concatenate([ids for ids, _ in pieces]), whole_ids)
    np.testing.assert_allclose(np.concatenate([lp for _, lp in pieces]), whole_log_probs,
                               rtol=1e-6, atol=1e-6)
