"""Negative sampling probabilities and draws."""

import numpy as np
import pytest
import tensorflow as tf

from tf_gru4rec.data.sampling import NegativeSampler, alias_table, sampling_probabilities


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_probabilities_are_support_to_the_alpha(alpha):
    support = np.array([1, 4, 0, 9, 16])
    expected = np.array([1, 4 ** alpha, 0, 9 ** alpha, 16 ** alpha], dtype=float)
    np.testing.assert_allclose(sampling_probabilities(support, alpha), expected / expected.sum())


def test_empirical_frequencies_match(rng):
    support = rng.integers(1, 200, size=50)
    sampler = NegativeSampler(support, 0.75, n_sample=1000, seed=5, steps_per_block=100)
    draws = sampler.draw_block(tf.constant(0), tf.constant(0), 100).numpy()
    assert draws.shape == (100, 1000)
    freq = np.bincount(draws.ravel(), minlength=50) / draws.size
    p = sampling_probabilities(support, 0.75)
    # 100k draws: standard error of each frequency <= sqrt(p/1e5) ~ 1e-3
    np.testing.assert_allclose(freq, p, atol=5 * np.sqrt(p.max() / draws.size))
    assert draws.max() < 50 and draws.min() >= 0


def test_draws_are_deterministic_per_block_and_never_pick_unsupported_items():
    support = np.array([0, 5, 0, 5])
    sampler = NegativeSampler(support, 1.0, n_sample=64, seed=1)
    a = sampler.draw_block(tf.constant(2), tf.constant(3), 10).numpy()
    b = sampler.draw_block(tf.constant(2), tf.constant(3), 10).numpy()
    c = sampler.draw_block(tf.constant(2), tf.constant(4), 10).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert set(np.unique(a)) <= {1, 3}


def test_draws_are_the_same_eagerly_and_in_the_input_pipeline():
    """A block's samples do not depend on where the draw runs (a resumed run draws its
    blocks in the pipeline again)."""
    sampler = NegativeSampler(np.arange(1, 30), 0.5, n_sample=16, seed=3)
    eager = [sampler.draw_block(tf.constant(1), tf.constant(b), 7).numpy() for b in (0, 7)]
    in_pipeline = list(tf.data.Dataset.from_tensor_slices(tf.constant([0, 7], tf.int64)).map(
        lambda b: sampler.draw_block(tf.constant(1, tf.int64), b, 7)).as_numpy_iterator())
    for a, b in zip(eager, in_pipeline, strict=True):
        np.testing.assert_array_equal(a, b)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="non-negative"):
        sampling_probabilities(np.array([-1, 2]), 0.5)
    with pytest.raises(ValueError, match="n_sample"):
        NegativeSampler(np.array([1, 2]), 0.5, n_sample=-1)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_alias_table_encodes_the_probabilities_exactly(rng, alpha):
    support = rng.integers(0, 50, size=40)
    support[[3, 17]] = 0
    p = sampling_probabilities(support, alpha)
    accept, alias = alias_table(p)
    n = len(p)
    # NumPy reference: the probability of j = (accept[j] + sum over slots aliased to j) / n.
    encoded = accept.copy()
    np.add.at(encoded, alias, 1.0 - accept)
    np.testing.assert_allclose(encoded / n, p, atol=1e-12)
    assert accept[3] == 0 and accept[17] == 0 and not np.isin([3, 17], alias[accept < 1]).any()


def test_blocks_dataset_has_the_same_steps_and_samples_as_the_steps_dataset(synthetic_log):
    from tf_gru4rec.data.input_pipeline import SessionParallelInput

    source = SessionParallelInput(synthetic_log[0], 8, n_sample=5, seed=3, steps_per_block=7)
    steps = list(source.dataset().as_numpy_iterator())
    blocks = list(source.dataset(blocks=True).as_numpy_iterator())
    assert [len(b["inputs"]) for b in blocks[:-1]] == [7] * (len(blocks) - 1)
    for key in ("inputs", "targets", "reset", "valid", "negatives"):
        np.testing.assert_array_equal(np.concatenate([b[key] for b in blocks]),
                                      np.stack([s[key] for s in steps]))
