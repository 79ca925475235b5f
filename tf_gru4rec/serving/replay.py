"""Replay a test click log through a served model and compute Recall@K / MRR@K.

Every test session is sent event by event through the stateful path, in session-parallel
batches laid out exactly as `tf_gru4rec.evaluation.evaluate` lays them out, and the metrics
come out identical to offline evaluation of the same model on the same file:

  - the items the model does not know are asked from the server (`lookup` signature), and
    dropped before sessions shorter than 2 events, as the CLI's evaluation does;
  - each request is one session-parallel step: B = `batch_size` rows (the same B as
    `evaluate`; slots without a session carry a padding session), each row "session s clicked
    item x, and the next click is y", sent to the `rank` signature. It advances the session's
    server-side state exactly like `serving_default` and returns, instead of the top K, the
    number of items scoring strictly higher than y and the number of other items scoring the
    same, from which every tie rule (standard / conservative / median) is exact;
  - every request has the same B rows because CPU matrix kernels sum in a different order for
    different batch sizes, which could move near-ties by one ulp;
  - the per-step sums use `tf_gru4rec.evaluation.metrics.rank_metrics`, as `evaluate` does.

Session ids are prefixed with a random run id, and each session is ended on the server as soon
as its last event is sent, so a replay neither reuses nor leaves behind server state. Ranks from
a GPU server can differ from a CPU `evaluate` in near-ties.
"""

from __future__ import annotations

import logging
import time
import uuid

import numpy as np
import pandas as pd
import tensorflow as tf

from tf_gru4rec.data.io import ITEM, read_events
from tf_gru4rec.data.preprocess import drop_short_sessions
from tf_gru4rec.data.session_log import SessionLog
from tf_gru4rec.data.vocabulary import ItemVocabulary
from tf_gru4rec.evaluation.metrics import check_tie_mode, rank_metrics
from tf_gru4rec.serving.client import PredictionClient

logger = logging.getLogger(__name__)

DEFAULT_CUTOFFS = (1, 5, 10, 20)
_END_EVERY = 256  # end finished sessions in requests of about this many ids


def replay(target, test, model_name: str = "gru4rec", cutoffs=DEFAULT_CUTOFFS,
           tie_mode: str = "conservative", batch_size: int | None = None, timeout: float = 30.0,
           read_options: dict | None = None, wait: float = 0.0) -> dict:
    """Recall@K and MRR@K of the served model over the test log, computed through the server.

    Args:
      target: "host:port" of a TF Serving gRPC endpoint, or a `PredictionClient`.
      test: path of a click log (read with `read_events(path, **read_options)`) or an event
        frame with columns SessionId, ItemId, Time.
      model_name: served model name.
      cutoffs, tie_mode: as for `evaluate`.
      batch_size: session-parallel slots per request; leave it to the default or use
        `evaluate`'s batch size for bit-identical results (both lay out the steps with
        `evaluation_steps`).
      timeout: deadline of each request in seconds.
      wait: seconds to wait for a server that is starting or loading the model (0: none).

    Returns {"recall@K": ..., "mrr@K": ..., "test_events": n, "replay_seconds": s,
    "requests": r}: the same keys and values as `evaluate`, timing aside.
    """
    check_tie_mode(tie_mode)
    cutoffs = tuple(int(k) for k in cutoffs)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"`batch_size` should be a positive integer. Received: {batch_size}")
    own_client = not isinstance(target, PredictionClient)
    client = PredictionClient(target, model_name, timeout=timeout) if own_client else target
    try:
        events = test if isinstance(test, pd.DataFrame) else read_events(
            test, **(read_options or {}))
        if wait > 0:
            client.wait(wait)
        return _replay(client, events, cutoffs, tie_mode, batch_size)
    finally:
        if own_client:
            client.close()


def known_items(client: PredictionClient, raw_items: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """bool [n]: which raw item ids the served model knows (`lookup` signature)."""
    strings = np.asarray([str(x) for x in raw_items], dtype=object)
    known = np.zeros(len(strings), dtype=bool)
    for start in range(0, len(strings), chunk):
        part = strings[start:start + chunk]
        known[start:start + chunk] = client.predict({"item_id": part}, "lookup")["known"]
    return known


def _replay(client, events: pd.DataFrame, cutoffs, tie_mode, batch_size) -> dict:
    from tf_gru4rec.data.session_parallel import evaluation_steps

    start = time.perf_counter()
    unique = pd.unique(events[ITEM].to_numpy())
    known = pd.Series(known_items(client, unique), index=unique)
    keep = known.reindex(events[ITEM].to_numpy()).to_numpy(dtype=bool)
    if (~keep).any():
        logger.info("replay: dropping %d events of items unknown to the model", (~keep).sum())
    events = drop_short_sessions(events[keep], 2)
    vocabulary = ItemVocabulary.from_events(events[ITEM].to_numpy())
    log = SessionLog.from_events(events, vocabulary)
    steps = evaluation_steps(log, batch_size)
    batch_size = steps.inputs.shape[1]
    item_strings = np.asarray(vocabulary.as_strings(), dtype=object)

    run = uuid.uuid4().hex[:12]
    pad_ids = np.asarray([f"replay-{run}/pad/{b}" for b in range(batch_size)], dtype=object)
    pad_item = item_strings[0] if len(item_strings) else ""
    generation = np.zeros(batch_size, dtype=np.int64)
    sums_fn = tf.function(lambda ranks, weights: rank_metrics(ranks, weights, cutoffs))
    totals = {f"{m}@{k}": 0.0 for k in cutoffs for m in ("recall", "mrr")}
    n_events, n_requests, to_end = 0, 0, []
    for t in range(steps.n_steps):
        valid, reset = steps.valid[t], steps.reset[t]
        generation += reset
        session_ids = np.where(valid, [f"replay-{run}/{b}/{g}" for b, g in
                                       enumerate(generation)], pad_ids).astype(object)
        inputs = np.where(valid, item_strings[steps.inputs[t]], pad_item).astype(object)
        targets = np.where(valid, item_strings[steps.targets[t]], pad_item).astype(object)
        out = client.predict({"session_id": session_ids, "item_id": inputs,
                              "target_item_id": targets}, "rank")
        n_requests += 1
        ranks = _ranks(out["n_higher"], out["n_ties"], tie_mode)
        if (valid & (out["n_higher"] < 0)).any():
            raise RuntimeError("The server does not know a test item it reported as known; "
                               "was the model version switched during the replay?")
        sums = sums_fn(tf.constant(np.where(valid, ranks, 1.0).astype(np.float32)),
                       tf.constant(valid.astype(np.float32)))
        for key, value in sums.items():
            totals[key] += float(value)
        n_events += int(valid.sum())
        last = t + 1 == steps.n_steps
        finished = valid & (last | ~steps.valid[min(t + 1, steps.n_steps - 1)]
                            | steps.reset[min(t + 1, steps.n_steps - 1)])
        to_end.extend(session_ids[finished])
        if len(to_end) >= _END_EVERY:
            client.end_sessions(to_end)
            n_requests, to_end = n_requests + 1, []
    client.end_sessions(to_end + list(pad_ids))
    n_requests += 1
    seconds = time.perf_counter() - start
    result = {k: v / max(n_events, 1) for k, v in totals.items()}
    result.update(test_events=n_events, replay_seconds=seconds, requests=n_requests)
    logger.info("replayed %d events in %d requests in %.2fs: %s", n_events, n_requests, seconds,
                {k: round(v, 4) for k, v in result.items() if "@" in k})
    return result


def _ranks(n_higher: np.ndarray, n_ties: np.ndarray, tie_mode: str) -> np.ndarray:
    """float32 ranks with the arithmetic of `tf_gru4rec.evaluation.metrics.target_ranks`."""
    higher = n_higher.astype(np.float32) + np.float32(1.0)
    ties = n_ties.astype(np.float32)
    if tie_mode == "standard":
        return higher
    return higher + (ties if tie_mode == "conservative" else np.float32(0.5) * ties)
