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
from tf_gru4rec.metrics import check_tie_mode, rank_metrics, target_ranks
from tf_gru4rec.session_parallel import session_parallel_steps

logger = logging.getLogger(__name__)

DEFAULT_CUTOFFS = (1, 5, 10, 20)


def evaluate(model, log: SessionLog, cutoffs=DEFAULT_CUTOFFS, tie_mode: str = "conservative",
             batch_size: int = 512) -> dict[str, float]:
    """Recall@K and MRR@K of a `GRU4Rec` model on the sessions of `log`.

    `log` must index items with the model's vocabulary (unknown test items dropped). Returns
    {"recall@K": ..., "mrr@K": ..., "test_events": n, "eval_seconds": s}.
    """
    check_tie_mode(tie_mode)
    if log.n_items != model.n_items:
        raise ValueError(f"The log indexes {log.n_items} items, the model {model.n_items}")
    cutoffs = tuple(int(k) for k in cutoffs)
    steps = session_parallel_steps(log, batch_size)
    step_fn = _make_step(model, tie_mode, cutoffs)
    states = [tf.zeros((batch_size, h)) for h in model.layer_sizes]
    totals = {f"{m}@{k}": 0.0 for k in cutoffs for m in ("recall", "mrr")}
    n_events = 0
    start = time.perf_counter()
    for t in range(steps.n_steps):
        sums, states = step_fn(steps.inputs[t], steps.targets[t], steps.reset[t],
                               steps.valid[t], states)
        for key, value in sums.items():
            totals[key] += float(value)
        n_events += int(steps.valid[t].sum())
    seconds = time.perf_counter() - start
    result = {k: v / max(n_events, 1) for k, v in totals.items()}
    result["test_events"] = n_events
    result["eval_seconds"] = seconds
    logger.info("evaluated %d events in %.2fs: %s", n_events, seconds,
                {k: round(v, 4) for k, v in result.items() if "@" in k})
    return result


def _make_step(model, tie_mode, cutoffs):
    @tf.function(reduce_retracing=True)
    def step(inputs, targets, reset, valid, states):
        keep = 1.0 - tf.cast(reset, tf.float32)[:, None]
        states = [s * keep for s in states]
        hidden, states = model.step(inputs, states, training=False)
        ranks = target_ranks(model.score_all(hidden), targets, tie_mode)
        return rank_metrics(ranks, tf.cast(valid, tf.float32), cutoffs), states

    return step


def naive_ranks(scores: np.ndarray, target: int, mode: str) -> float:
    """Reference rank of `target` in a 1-d score array (for tests and checks)."""
    check_tie_mode(mode)
    higher = int((scores > scores[target]).sum())
    ties = int((scores == scores[target]).sum()) - 1
    return {"standard": higher + 1, "conservative": higher + 1 + ties,
            "median": higher + 1 + 0.5 * ties}[mode]
