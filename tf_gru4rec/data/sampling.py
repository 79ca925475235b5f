"""Additional negative samples drawn with probability proportional to support ** alpha.

Samples are shared by the whole mini-batch (SPEC.md, "Output sampling"). They are drawn outside
the compiled training step, in the input pipeline, in blocks of many steps at a time (the
"sample cache"): sampling inside an XLA-compiled step is very slow on CPU. Each block's draw is
a small XLA program of its own: TensorFlow's float64 random kernel alone took ~3/4 of the input
pipeline's time, XLA's form of the same draw a fraction of it (BENCHMARKS.md, "Sixth look").
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


def alias_table(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker's alias table of a distribution over n outcomes (Vose's construction).

    Returns (accept float64 [n], alias int64 [n]): draw a slot i uniformly, keep i with
    probability accept[i], else take alias[i]. Then P(j) = (accept[j] + sum of
    (1 - accept[i]) over the slots i with alias[i] = j) / n, which equals `probabilities`.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    n = len(p)
    scaled = p * (n / p.sum())
    accept = np.ones(n)
    alias = np.arange(n)
    small = [i for i in range(n) if scaled[i] < 1.0]
    large = [i for i in range(n) if scaled[i] >= 1.0]
    while small and large:
        s, g = small.pop(), large.pop()
        accept[s], alias[s] = scaled[s], g
        scaled[g] -= 1.0 - scaled[s]
        (small if scaled[g] < 1.0 else large).append(g)
    # Whatever is left has scaled == 1 up to rounding: always kept. A zero-probability slot is
    # always in `small` with accept 0, so it is never kept itself.
    return accept, alias


class NegativeSampler:
    """Draws blocks of `n_sample` negatives per step from a fixed distribution.

    Each draw costs O(1) (an alias table, `alias_table`): one uniform number picks a slot
    (integer part) and decides between the slot and its alias (fractional part). Draws are a
    pure function of (seed, epoch, block), so a resumed run sees the same samples.
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
        accept, alias = alias_table(self.probabilities)
        self._accept = tf.constant(accept, dtype=tf.float64)
        self._alias = tf.constant(alias, dtype=tf.int32)
        self._n_items = len(accept)
        self._compiled_draw = tf.function(self._draw, jit_compile=True)

    def draw_block(self, epoch: tf.Tensor, block: tf.Tensor, n_steps) -> tf.Tensor:
        """int32 [n_steps, n_sample] samples of block `block` of epoch `epoch` (eagerly or
        in-graph; compiled by XLA, one program per block length)."""
        return self._compiled_draw(epoch, block, n_steps)

    def _draw(self, epoch, block, n_steps):
        key = tf.stack([tf.cast(self.seed, tf.int64),
                        tf.cast(epoch, tf.int64) * 1_000_003 + tf.cast(block, tf.int64)])
        u = tf.random.stateless_uniform([n_steps * self.n_sample], seed=key, dtype=tf.float64)
        u = u * self._n_items
        slot = tf.minimum(tf.cast(u, tf.int32), self._n_items - 1)
        keep = (u - tf.cast(slot, tf.float64)) < tf.gather(self._accept, slot)
        idx = tf.where(keep, slot, tf.gather(self._alias, slot))
        return tf.reshape(idx, [n_steps, self.n_sample])

    def add_to_block(self, block: dict) -> dict:
        """Adds `negatives` int32 [K, n_sample] to a block of K steps (a dict whose `epoch` and
        `step` entries are [K]); the draw is keyed by the epoch and the block's first step."""
        n_steps = tf.shape(block["step"])[0]
        block = dict(block)
        block["negatives"] = self.draw_block(block["epoch"][0], block["step"][0], n_steps)
        return block
