"""Session-parallel evaluation over the full catalogue (SPEC.md, "Evaluation").

Each test session is fed event by event from a zero state; after every event except the last,
all items are scored and the rank of the true next item is counted with the chosen tie rule.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import tensorflow as tf

from tf_gru4rec.data.session_log import SessionLog
from tf_gru4rec.data.session_parallel import evaluation_steps
from tf_gru4rec.evaluation.metrics import check_tie_mode, rank_metrics, target_ranks

# The logger's name from before the move into a subpackage: whoever tunes or filters these
# log lines keeps doing so by that name.
logger = logging.getLogger("tf_gru4rec.evaluation")

DEFAULT_CUTOFFS = (1, 5, 10, 20)


def evaluate(model, log: SessionLog, cutoffs=DEFAULT_CUTOFFS, tie_mode: str = "conservative",
             batch_size: int | None = None) -> dict[str, float]:
    """Recall@K and MRR@K of a `GRU4Rec` model on the sessions of `log`.

    `log` must index items with the model's vocabulary (unknown test items dropped). Returns
    {"recall@K": ..., "mrr@K": ..., "test_events": n, "eval_seconds": s}. The whole pass runs
    in one TensorFlow call (a loop over the session-parallel steps, see `evaluation_steps`);
    `batch_size` (slots per step) defaults to a size that keeps the slots full. Each step
    scores [batch_size, n_items]: pass a smaller batch for very large catalogues.
    """
    check_tie_mode(tie_mode)
    if log.n_items != model.n_items:
        raise ValueError(f"The log indexes {log.n_items} items, the model {model.n_items}")
    cutoffs = tuple(int(k) for k in cutoffs)
    start = time.perf_counter()
    steps = evaluation_steps(log, batch_size)
    sums = _evaluation_loop(model, tie_mode, cutoffs)(
        tf.constant(steps.inputs), tf.constant(steps.targets), tf.constant(steps.reset),
        tf.constant(steps.valid))
    n_events = int(steps.valid.sum())
    result = {k: float(v) / max(n_events, 1) for k, v in sums.items()}
    seconds = time.perf_counter() - start
    result["test_events"] = n_events
    result["eval_seconds"] = seconds
    logger.info("evaluated %d events in %.2fs: %s", n_events, seconds,
                {k: round(v, 4) for k, v in result.items() if "@" in k})
    return result


def _evaluation_loop(model, tie_mode, cutoffs):
    """A tf.function: steps [T, B] -> sums of hits and reciprocal ranks over all steps."""
    cache = model.__dict__.setdefault("_tf_gru4rec_eval_loops", {})
    key = (tie_mode, cutoffs)
    if key in cache:
        return cache[key]

    # Not XLA-compiled: the exported SavedModel runs the same TensorFlow kernels, so replay
    # through a server reproduces these numbers bit for bit.
    @tf.function
    def one_step(inputs, targets, reset, valid, states):
        keep = 1.0 - tf.cast(reset, tf.float32)[:, None]
        states = [s * keep for s in states]
        hidden, states = model.step(inputs, states, training=False)
        ranks = target_ranks(model.score_all(hidden), targets, tie_mode)
        return rank_metrics(ranks, tf.cast(valid, tf.float32), cutoffs), states

    @tf.function(reduce_retracing=True)
    def loop(inputs, targets, reset, valid):
        batch = tf.shape(inputs)[1]
        states = [tf.zeros((batch, h)) for h in model.layer_sizes]
        totals = {f"{m}@{k}": tf.constant(0.0, tf.float64)
                  for k in cutoffs for m in ("recall", "mrr")}
        for t in tf.range(tf.shape(inputs)[0]):
            sums, states = one_step(inputs[t], targets[t], reset[t], valid[t], states)
            totals = {k: totals[k] + tf.cast(sums[k], tf.float64) for k in totals}
        return totals

    cache[key] = loop
    return loop


def naive_ranks(scores: np.ndarray, target: int, mode: str) -> float:
    """Reference rank of `target` in a 1-d score array (for tests and checks)."""
    check_tie_mode(mode)
    higher = int((scores > scores[target]).sum())
    ties = int((scores == scores[target]).sum()) - 1
    return {"standard": higher + 1, "conservative": higher + 1 + ties,
            "median": higher + 1 + 0.5 * ties}[mode]
