"""Additional negative samples drawn with probability proportional to support ** alpha.

Samples are shared by the whole mini-batch (SPEC.md, "Output sampling"). They are drawn outside
the compiled training step, in the input pipeline, in blocks of many steps at a time (the
"sample cache"): sampling inside an XLA-compiled step is very slow on CPU.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def sampling_probabilities(support: np.ndarray, alpha: float) -> np.ndarray:
    """float64 [n_items] P(item) = support**alpha / sum(support**alpha); zero where support is 0.

    alpha = 0 is uniform over the items seen in training, alpha = 1 is popularity.
    """
    support = np.asarray(support, dtype=np.float64)
    if (support < 0).any():
        raise ValueError("`support` should be non-negative counts")
    weights = np.zeros_like(support)
    np.power(support, alpha, out=weights, where=support > 0)
    total = weights.sum()
    if total <= 0:
        raise ValueError("`support` has no positive entry: nothing to sample from")
    return weights / total


class NegativeSampler:
    """Draws blocks of `n_sample` negatives per step from a fixed distribution.

    Draws are a pure function of (seed, epoch, block), so a resumed run sees the same samples.
    """

    def __init__(self, support: np.ndarray, alpha: float, n_sample: int, seed: int = 0,
                 steps_per_block: int = 1024):
        if n_sample < 0:
            raise ValueError(f"`n_sample` should be >= 0. Received: {n_sample}")
        self.n_sample = int(n_sample)
        self.alpha = float(alpha)
        self.seed = int(seed)
        self.steps_per_block = int(steps_per_block)
        self.probabilities = sampling_probabilities(support, alpha)
        cdf = np.cumsum(self.probabilities)
        cdf /= cdf[-1]
        self._cdf = tf.constant(cdf, dtype=tf.float64)
        self._n_items = len(cdf)

    def draw_block(self, epoch: tf.Tensor, block: tf.Tensor, n_steps) -> tf.Tensor:
        """int32 [n_steps, n_sample] samples of block `block` of epoch `epoch` (in-graph)."""
        key = tf.stack([tf.cast(self.seed, tf.int64),
                        tf.cast(epoch, tf.int64) * 1_000_003 + tf.cast(block, tf.int64)])
        u = tf.random.stateless_uniform([n_steps * self.n_sample], seed=key, dtype=tf.float64)
        idx = tf.minimum(tf.searchsorted(self._cdf, u, side="right"), self._n_items - 1)
        return tf.reshape(tf.cast(idx, tf.int32), [n_steps, self.n_sample])

    def add_to(self, steps: tf.data.Dataset) -> tf.data.Dataset:
        """Adds `negatives` int32 [n_sample] to each element of a dataset of step dicts that
        carry scalar `epoch` and `step` entries; draws `steps_per_block` steps at a time."""

        def draw(block):
            n_steps = tf.shape(block["step"])[0]
            first = block["step"][0]
            block["negatives"] = self.draw_block(block["epoch"][0], first, n_steps)
            return block

        return steps.batch(self.steps_per_block).map(draw).unbatch()
