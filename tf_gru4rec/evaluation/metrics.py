"""Full-catalogue ranks with explicit tie handling, and Recall@K / MRR@K.

rank of the target = 1 + (items scoring higher) + a share of the other items scoring the same:
  standard:     none of the ties (optimistic),
  conservative: all of the ties (every tie counts against the target; the default),
  median:       half of the ties.
Example: scores [0.5, 0.9, 0.5, 0.1], target item 0 (score 0.5): one item scores higher and
one other ties, so standard 2, conservative 3, median 2.5.
"""

from __future__ import annotations

import tensorflow as tf

TIE_MODES = ("standard", "conservative", "median")


def check_tie_mode(mode: str) -> str:
    if mode not in TIE_MODES:
        raise ValueError(f"`tie_mode` should be one of {TIE_MODES}. Received: {mode!r}")
    return mode


def target_ranks(scores: tf.Tensor, targets: tf.Tensor, mode: str = "conservative") -> tf.Tensor:
    """float32 [B] rank of each target among all items.

    scores: [B, n_items]; targets: int [B] item indices.
    """
    check_tie_mode(mode)
    target_scores = tf.gather(scores, targets, axis=1, batch_dims=1)[:, None]  # (B, 1)
    higher = tf.reduce_sum(tf.cast(scores > target_scores, tf.float32), axis=1)
    if mode == "standard":
        return higher + 1.0
    ties = tf.reduce_sum(tf.cast(scores == target_scores, tf.float32), axis=1) - 1.0
    return higher + 1.0 + (ties if mode == "conservative" else 0.5 * ties)


def rank_metrics(ranks: tf.Tensor, weights: tf.Tensor, cutoffs) -> dict[str, tf.Tensor]:
    """Sums (not means) of hits and reciprocal ranks for each cutoff K over weighted events.

    Returns {"recall@K": sum w * [rank <= K], "mrr@K": sum w * [rank <= K] / rank}.
    """
    out = {}
    for k in cutoffs:
        hit = tf.cast(ranks <= k, tf.float32) * weights
        out[f"recall@{k}"] = tf.reduce_sum(hit)
        out[f"mrr@{k}"] = tf.reduce_sum(hit / ranks)
    return out
