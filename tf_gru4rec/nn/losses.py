"""Sampled ranking losses of GRU4Rec (SPEC.md, "Ranking losses").

Every loss takes, for B events:
  positive: [B] score r_i of each event's target item,
  negatives: [B, C] scores r_j of the sampled items,
  mask: [B, C] 1.0 where column j is a real negative for row i, 0.0 where it is not
        (the row's own target, or an empty slot),
and returns the per-event loss [B]. N_S is the number of real negatives of a row.
Training takes cross-entropy and BPR-max from the head's score matrix
(`cross_entropy_over_columns`, `bpr_max_over_columns`), with their gradients written out.
"""

from __future__ import annotations

import tensorflow as tf
from keras import ops

_TINY = 1e-24
_NEG_INF = -1e30


def _masked(negatives, mask):
    return ops.where(mask > 0, negatives, ops.full_like(negatives, _NEG_INF))


def _count(mask):
    return ops.maximum(ops.sum(mask, axis=1), 1.0)


def negative_softmax(negatives, mask):
    """s_j = softmax(r_j) over the real negatives of each row: [B, C], zero where masked."""
    x = _masked(negatives, mask)
    x = x - ops.max(x, axis=1, keepdims=True)
    e = ops.exp(x) * mask
    return e / ops.maximum(ops.sum(e, axis=1, keepdims=True), _TINY)


def _log_softmax_target(x, target, valid):
    """log(softmax(x)_target + 1e-24) per row, as the official PyTorch port computes it:
    x [B, C] logits, target [B] the target's logit (one of x's entries), valid [B, C] 1.0
    where a column takes part. A target whose probability is far below 1e-24 (or underflows
    to 0) gives at most -log(1e-24) = 55.26 and almost no gradient, where the exact
    logsumexp form would grow without bound."""
    shift = ops.stop_gradient(ops.max(x, axis=1, keepdims=True))
    total = ops.maximum(ops.sum(ops.exp(x - shift) * valid, axis=1), _TINY)
    # A valid row's target is one of its columns, so target <= shift there; the clamp only
    # keeps rows without a valid target column (empty slots, masked later) finite.
    centred = target - shift[:, 0]
    centred = ops.where(centred > 0, ops.zeros_like(centred), centred)
    return ops.log(ops.exp(centred) / total + _TINY)


def cross_entropy(positive, negatives, mask):
    """L = -log(softmax(r)_i + 1e-24) over the target and its negatives (the port's form,
    see `_log_softmax_target`)."""
    x = ops.concatenate([positive[:, None], _masked(negatives, mask)], axis=1)
    valid = ops.concatenate([ops.ones_like(positive)[:, None], mask], axis=1)
    return -_log_softmax_target(x, positive, valid)


def cross_entropy_over_columns(scores, column_valid):
    """`cross_entropy` straight from the sampled head's score matrix, whose first B columns
    are the batch's targets (row i's target in column i): scores [B, C], column_valid [C]
    (1.0 for a real column) -> [B].

    L_i = -log(p_i + 1e-24), p_i = softmax_j(r_ij)_i over the valid columns, which equals
    `cross_entropy(r_ii, r_i., mask)` with mask = column_valid off the diagonal for every
    valid row i (its own column is valid), without copying the positives into a new column.
    Its gradient is written out (the same maths as differentiating `_log_softmax_target`):
    dL_i/dr_ij = w_i (s_ij - [j == i]), w_i = p_i / (p_i + 1e-24), s the softmax; one pass
    over [B, C] where the traced gradient takes several (BENCHMARKS.md, "Fifth look").
    """
    batch = tf.shape(scores)[0]
    valid = column_valid[None, :] > 0

    @tf.custom_gradient
    def loss_of(scores):
        x = tf.where(valid, scores, tf.constant(_NEG_INF, scores.dtype))
        shift = tf.reduce_max(x, axis=1)  # [B]
        exp = tf.exp(x - shift[:, None])  # [B, C]; 0 in the masked columns
        total = tf.maximum(tf.reduce_sum(exp, axis=1), _TINY)
        # A valid row's target is one of its columns, so it is <= shift there; the clamp
        # keeps rows without a valid target column (empty slots, masked later) finite.
        centred = tf.linalg.diag_part(scores[:, :batch]) - shift
        target = tf.exp(tf.minimum(centred, 0.0)) / total  # p_i [B]

        def gradient(upstream):
            weight = upstream * target / (target + _TINY)  # [B]
            at_target = weight * tf.cast(centred <= 0.0, weight.dtype)  # the clamp's gradient
            diagonal = tf.eye(batch, tf.shape(scores)[1], dtype=scores.dtype)
            return exp * (weight / total)[:, None] - diagonal * at_target[:, None]

        return -tf.math.log(target + _TINY), gradient

    return loss_of(scores)


def bpr(positive, negatives, mask):
    """L = -1/N_S sum_j log(sigmoid(r_i - r_j))."""
    loss = -ops.log_sigmoid(positive[:, None] - negatives) * mask
    return ops.sum(loss, axis=1) / _count(mask)


def top1(positive, negatives, mask):
    """L = 1/N_S sum_j [sigmoid(r_j - r_i) + sigmoid(r_j^2)]."""
    loss = (ops.sigmoid(negatives - positive[:, None]) + ops.sigmoid(ops.square(negatives))) * mask
    return ops.sum(loss, axis=1) / _count(mask)


def top1_max(positive, negatives, mask):
    """L = sum_j s_j [sigmoid(r_j - r_i) + sigmoid(r_j^2)], s = softmax over the negatives."""
    s = negative_softmax(negatives, mask)
    loss = s * (ops.sigmoid(negatives - positive[:, None]) + ops.sigmoid(ops.square(negatives)))
    return ops.sum(loss, axis=1)


def bpr_max(positive, negatives, mask, bpreg: float = 0.0):
    """L = -log sum_j s_j sigmoid(r_i - r_j) + bpreg * sum_j s_j r_j^2,
    s = softmax over the negatives."""
    _, _, ranking, regulariser = _bpr_max_terms(positive, negatives, mask)
    return -ops.log(ranking + _TINY) + bpreg * regulariser


def _bpr_max_terms(positive, negatives, mask):
    """BPR-max's terms: s, the softmax over the real negatives [B, C]; sigma_j =
    sigmoid(r_i - r_j) [B, C]; R = sum_j s_j sigma_j and Q = sum_j s_j r_j^2 [B]."""
    s = negative_softmax(negatives, mask)
    sigma = ops.sigmoid(positive[:, None] - negatives)
    return s, sigma, ops.sum(s * sigma, axis=1), ops.sum(s * ops.square(negatives), axis=1)


def bpr_max_over_columns(scores, column_valid, bpreg: float = 0.0):
    """`bpr_max` straight from the sampled head's score matrix (row i's target in column i,
    as in `cross_entropy_over_columns`): scores [B, C], column_valid [C] -> [B]. Row i's
    negatives are its valid columns other than i.

    Its gradient is written out (the same maths as differentiating `bpr_max`). With s the
    softmax over the negatives, sigma_j = sigmoid(r_ii - r_ij), R = sum_j s_j sigma_j and
    Q = sum_j s_j r_ij^2 (L = -log(R + 1e-24) + bpreg Q):
        dL/dr_ij = s_j [bpreg (r_ij^2 - Q + 2 r_ij) - (sigma_j^2 - R) / (R + 1e-24)]
        dL/dr_ii = -sum_j s_j sigma_j (1 - sigma_j) / (R + 1e-24)
    in one pass over [B, C] (BENCHMARKS.md, "Fifth look").
    """
    batch, columns = tf.shape(scores)[0], tf.shape(scores)[1]
    diagonal = tf.eye(batch, columns, dtype=scores.dtype)
    mask = column_valid[None, :] * (1.0 - diagonal)  # [B, C]

    @tf.custom_gradient
    def loss_of(scores):
        s, sigma, ranking, regulariser = _bpr_max_terms(
            tf.linalg.diag_part(scores[:, :batch]), scores, mask)

        def gradient(upstream):
            inverse = upstream / (ranking + _TINY)  # [B]
            square = tf.square(scores)
            negatives = s * (bpreg * upstream[:, None] * (square - regulariser[:, None]
                                                          + 2.0 * scores)
                             - inverse[:, None] * (tf.square(sigma) - ranking[:, None]))
            target = -inverse * tf.reduce_sum(s * sigma * (1.0 - sigma), axis=1)
            return negatives + diagonal * target[:, None]

        return -tf.math.log(ranking + _TINY) + bpreg * regulariser, gradient

    return loss_of(scores)


LOSSES = {
    "cross-entropy": cross_entropy,
    "bpr": bpr,
    "top1": top1,
    "top1-max": top1_max,
    "bpr-max": bpr_max,
}


def get(name: str):
    """The loss function called `name` (one of `LOSSES`)."""
    if name not in LOSSES:
        raise ValueError(f"`loss` should be one of {sorted(LOSSES)}. Received: {name!r}")
    return LOSSES[name]
