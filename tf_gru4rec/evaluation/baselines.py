"""Baselines of the GRU4Rec papers: POP, S-POP, item-KNN and BPR-MF (SPEC.md, "Baselines").

The scores follow the definitions of the original GRU4Rec repository's `baselines.py` (read
for facts; this is our own vectorised NumPy code), so that the numbers are comparable:

  POP:      r_i = supp_i / (1 + supp_i) for the `top_n` most supported items, 0 for the rest.
  S-POP:    r_{s,i} = n_{s,i} + POP_i, where n_{s,i} counts item i among the session's events
            so far (the current one included) and POP_i is the POP score above (0 outside the
            top N, so session items outside it score their count only).
  item-KNN: r_i = sim(x, i) for the `n_neighbors` most similar items of the current item x,
            0 for all others (x itself included), with
            sim(x, j) = c_{x,j} / ((supp_x + lmbd)^alpha * (supp_j + lmbd)^(1 - alpha)),
            c_{x,j} = sum over training sessions s of (events of x in s) * [j occurs in s].
  BPR-MF:   matrix factorisation of the (session, item) matrix trained with the BPR loss
            `-log sigmoid(u_s . (w_p - w_n))` by SGD; at prediction a session is the mean of
            the item vectors of its events so far and r_i = mean . w_i.

`supp_i` is the number of training events of item i. Every baseline is fed session-parallel
like the GRU model (`session_parallel_steps`): `step(inputs [B], reset [B], state)` returns the
scores of ALL items, float64 [B, n_items], after the slot's current event, and
`evaluate_baseline` ranks the true next item with the same tie rules as
`tf_gru4rec.evaluation.metrics.target_ranks` (a NumPy twin in float64, so no TensorFlow import
and no float32 rounding that would create ties the original's float64 scores do not have).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence

import numpy as np

from tf_gru4rec.data.session_log import SessionLog
from tf_gru4rec.data.session_parallel import session_parallel_steps

# The logger's name from before the move into a subpackage: whoever tunes or filters these
# log lines keeps doing so by that name.
logger = logging.getLogger("tf_gru4rec.baselines")

DEFAULT_CUTOFFS = (1, 5, 10, 20)
TIE_MODES = ("standard", "conservative", "median")  # as tf_gru4rec.evaluation.metrics.TIE_MODES
BASELINE_NAMES = ("pop", "spop", "itemknn", "bprmf")


def _check_tie_mode(mode: str) -> str:
    if mode not in TIE_MODES:
        raise ValueError(f"`tie_mode` should be one of {TIE_MODES}. Received: {mode!r}")
    return mode


def _check_positive_int(name: str, value, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` should be a positive integer. Received: {value!r}")
    return int(value)


def _check_non_negative(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not (
        np.isfinite(value) and value >= 0
    ):
        raise ValueError(f"`{name}` should be a non-negative number. Received: {value!r}")
    return value


class Baseline:
    """Common interface: `fit(log)`, then session-parallel `initial_state` / `step`.

    Subclasses set `n_items` in `fit` and implement `initial_state` and `step`.
    """

    name = "baseline"
    n_items: int | None = None

    def fit(self, log: SessionLog) -> Baseline:
        raise NotImplementedError

    def initial_state(self, batch_size: int):
        """State of `batch_size` empty slots (None for stateless baselines)."""
        return None

    def step(self, inputs: np.ndarray, reset: np.ndarray, state):
        """Scores after one event per slot.

        Args:
          inputs: int [B] current item of each slot.
          reset: bool [B] the slot starts a new session with this event (forget its past).
          state: from `initial_state` or the previous `step` (it may be updated in place).

        Returns:
          (scores float64 [B, n_items], new state). The scores may be a read-only view.
        """
        raise NotImplementedError

    def score_session(self, items: Sequence[int]) -> np.ndarray:
        """float64 [len(items), n_items]: the scores after each event of one session."""
        self._check_fitted()
        state = self.initial_state(1)
        rows = []
        for t, item in enumerate(items):
            scores, state = self.step(np.array([item]), np.array([t == 0]), state)
            rows.append(np.array(scores[0], dtype=np.float64))
        return np.stack(rows) if rows else np.zeros((0, self.n_items))

    def _check_fitted(self) -> None:
        if self.n_items is None:
            raise ValueError(f"{type(self).__name__} is not fitted: call `fit(train_log)` first")

    def _check_inputs(self, inputs: np.ndarray) -> np.ndarray:
        inputs = np.asarray(inputs, dtype=np.int64)
        if inputs.size and (inputs.min() < 0 or inputs.max() >= self.n_items):
            raise ValueError(
                f"Item indices should be in [0, {self.n_items}). Received min {inputs.min()}, "
                f"max {inputs.max()}"
            )
        return inputs


def _popularity_scores(support: np.ndarray, top_n: int | None) -> np.ndarray:
    """float64 [n_items]: supp / (1 + supp) for the `top_n` most supported items, else 0.

    Ties at the N-th place go to the lower item index (the original's sort leaves them open).
    """
    support = support.astype(np.float64)
    scores = support / (support + 1.0)
    if top_n is not None and top_n < len(scores):
        order = np.argsort(-support, kind="stable")
        keep = np.zeros(len(scores), dtype=bool)
        keep[order[:top_n]] = True
        scores[~keep] = 0.0
    return scores


class Pop(Baseline):
    """Global popularity: r_i = supp_i / (1 + supp_i) for the `top_n` most supported training
    items, 0 for the others; the same list for every event.

    Args:
      top_n: only this many items get a non-zero score (the original's default 100; None for
        all). Keep it >= the largest cutoff.
    """

    name = "pop"

    def __init__(self, top_n: int | None = 100):
        self.top_n = _check_positive_int("top_n", top_n, allow_none=True)

    def fit(self, log: SessionLog) -> Pop:
        self.n_items = log.n_items
        self.scores_ = _popularity_scores(log.item_support(), self.top_n)  # (n_items,)
        return self

    def step(self, inputs, reset, state):
        self._check_fitted()
        inputs = self._check_inputs(inputs)
        return np.broadcast_to(self.scores_, (len(inputs), self.n_items)), state


class SessionPop(Baseline):
    """Session popularity with popularity tie-break: r_{s,i} = n_{s,i} + POP_i.

    n_{s,i}: events of item i in the session so far, the current event included. POP_i: the
    `Pop` score (supp_i / (1 + supp_i) < 1 for the `top_n` items, 0 for the others), so items
    seen more often in the session always rank first and popularity orders the rest.

    State: float64 [B, n_items] session counts, updated in place by `step`.
    """

    name = "spop"

    def __init__(self, top_n: int | None = 100):
        self.top_n = _check_positive_int("top_n", top_n, allow_none=True)

    def fit(self, log: SessionLog) -> SessionPop:
        self.n_items = log.n_items
        self.popularity_ = _popularity_scores(log.item_support(), self.top_n)  # (n_items,)
        return self

    def initial_state(self, batch_size: int):
        self._check_fitted()
        return np.zeros((batch_size, self.n_items), dtype=np.float64)

    def step(self, inputs, reset, state):
        self._check_fitted()
        inputs = self._check_inputs(inputs)
        counts = state  # (B, n_items), updated in place: a copy per step costs more than scoring
        counts[np.asarray(reset, dtype=bool)] = 0.0
        counts[np.arange(len(inputs)), inputs] += 1.0
        return self.popularity_[None, :] + counts, counts


class ItemKNN(Baseline):
    """Item-to-item similarity of the current item: r_i = sim(x, i) for the `n_neighbors` most
    similar items i of the current item x, 0 for every other item (x included).

      sim(x, j) = c_{x,j} / ((supp_x + lmbd)^alpha * (supp_j + lmbd)^(1 - alpha)),  j != x
      c_{x,j}   = sum_s (events of x in session s) * [j occurs in s]

    (alpha 0.5 is a regularised cosine; 1 an association-rule confidence; `lmbd` discounts rare
    items.) Only the current item matters, not the rest of the session. Neighbours are kept as
    CSR-style arrays (`indptr` [n_items + 1], `neighbors`, `similarities`) holding only positive
    similarities, sorted by decreasing similarity, ties by increasing item index.

    `fit` builds the co-occurrence counts in blocks of source items so that memory stays
    bounded by `max_pairs_per_block` expanded (item, session item) pairs, whatever the catalogue
    size.
    """

    name = "itemknn"

    def __init__(self, n_neighbors: int = 100, lmbd: float = 20, alpha: float = 0.5,
                 max_pairs_per_block: int = 1 << 24):
        self.n_neighbors = _check_positive_int("n_neighbors", n_neighbors)
        self.lmbd = _check_non_negative("lmbd", lmbd)
        if not (isinstance(alpha, (int, float, np.number)) and 0.0 <= alpha <= 1.0):
            raise ValueError(f"`alpha` should be a number in [0, 1]. Received: {alpha!r}")
        self.alpha = alpha
        self.max_pairs_per_block = _check_positive_int("max_pairs_per_block", max_pairs_per_block)

    def fit(self, log: SessionLog) -> ItemKNN:
        n = log.n_items
        support = log.item_support()  # (n,) events per item
        session_of = np.repeat(np.arange(log.n_sessions, dtype=np.int64), log.lengths)
        # Distinct (session, item) pairs with the item's event count in that session.
        keys, counts = np.unique(session_of * n + log.items, return_counts=True)
        pair_session, pair_item = keys // n, keys % n  # sorted by session, then item
        session_ptr = np.zeros(log.n_sessions + 1, dtype=np.int64)
        np.cumsum(np.bincount(pair_session, minlength=log.n_sessions), out=session_ptr[1:])
        n_unique = np.diff(session_ptr)  # distinct items per session
        # The same pairs grouped by item: each expands into its session's distinct items.
        by_item = np.argsort(pair_item, kind="stable")
        cost = n_unique[pair_session[by_item]]
        item_ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(pair_item, minlength=n), out=item_ptr[1:])
        cost_before = np.concatenate([[0], np.cumsum(cost)])[item_ptr]  # (n + 1,)
        norm_src = np.power(support + self.lmbd, self.alpha)  # (n,)
        norm_dst = np.power(support + self.lmbd, 1.0 - self.alpha)  # (n,)
        parts = []
        first = 0
        while first < n:
            last = int(np.searchsorted(cost_before, cost_before[first] + self.max_pairs_per_block,
                                       side="right")) - 1
            last = min(max(last, first + 1), n)
            parts.append(self._block(first, last, by_item[item_ptr[first]:item_ptr[last]],
                                     pair_session, pair_item, counts, session_ptr, n_unique,
                                     norm_src, norm_dst, n))
            first = last
        src = np.concatenate([p[0] for p in parts])
        self.neighbors_ = np.concatenate([p[1] for p in parts]).astype(np.int32)
        self.similarities_ = np.concatenate([p[2] for p in parts])
        self.indptr_ = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(src, minlength=n), out=self.indptr_[1:])
        self.n_items = n
        logger.info("item-KNN: %d items, %d neighbour entries (%.1f per item)", n,
                    len(self.neighbors_), len(self.neighbors_) / max(n, 1))
        return self

    def _block(self, first, last, pairs, pair_session, pair_item, counts, session_ptr, n_unique,
               norm_src, norm_dst, n):
        """Top neighbours of source items [first, last): (source, neighbour, similarity)."""
        sessions = pair_session[pairs]
        lengths = n_unique[sessions]
        src = np.repeat(pair_item[pairs], lengths)
        weight = np.repeat(counts[pairs], lengths).astype(np.float64)
        within = np.arange(len(src)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        dst = pair_item[np.repeat(session_ptr[sessions], lengths) + within]
        other = src != dst
        keys, inverse = np.unique((src[other] - first) * n + dst[other], return_inverse=True)
        cooc = np.bincount(inverse, weights=weight[other], minlength=len(keys))
        src, dst = keys // n + first, keys % n
        sim = cooc / (norm_src[src] * norm_dst[dst])
        order = np.lexsort((dst, -sim, src))  # by source, decreasing similarity, then index
        src, dst, sim = src[order], dst[order], sim[order]
        starts = np.flatnonzero(np.r_[True, src[1:] != src[:-1]])
        group_len = np.diff(np.r_[starts, len(src)])
        rank = np.arange(len(src)) - np.repeat(starts, group_len)
        keep = (rank < self.n_neighbors) & (sim > 0)
        return src[keep], dst[keep], sim[keep]

    def neighbors_of(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        """(neighbour indices, similarities) of one item, most similar first."""
        self._check_fitted()
        lo, hi = self.indptr_[item], self.indptr_[item + 1]
        return self.neighbors_[lo:hi], self.similarities_[lo:hi]

    def step(self, inputs, reset, state):
        self._check_fitted()
        inputs = self._check_inputs(inputs)
        lo, hi = self.indptr_[inputs], self.indptr_[inputs + 1]
        lengths = hi - lo
        rows = np.repeat(np.arange(len(inputs)), lengths)
        pos = np.repeat(lo - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())
        scores = np.zeros((len(inputs), self.n_items), dtype=np.float64)  # (B, n_items)
        scores[rows, self.neighbors_[pos]] = self.similarities_[pos]
        return scores, state


class BPRMF(Baseline):
    """BPR matrix factorisation of sessions x items; a test session is the mean of its items.

    Training (as the original `BPR`): one vector u_s per training session and w_i per item,
    drawn from U(-sigma, sigma) (or N(0, sigma) with `init_normal`); for each training event
    (s, p) in random order and a uniformly drawn negative item n, with x = u_s . (w_p - w_n)
    and c = 1 - sigmoid(x), SGD on log sigmoid(x):
      u_s += lr * (c (w_p - w_n) - lambda_session u_s)
      w_p += lr * (c u_s - lambda_item w_p)
      w_n += lr * (-c u_s - lambda_item w_n)
    `batch_size` events are updated together from the same parameters (their updates summed);
    `batch_size=1` is the original's event-by-event SGD. The original declares item biases but
    never updates them (they stay 0), so there are none here.

    Prediction: r_i = mean(w_x for the session's events so far) . w_i.
    State: (sums float64 [B, n_factors], counts float64 [B]).

    Differences from the original: the negative item is uniform over the catalogue (the
    original takes the item of a random one of the first n_items training rows).
    """

    name = "bprmf"

    def __init__(self, n_factors: int = 100, n_epochs: int = 10, learning_rate: float = 0.01,
                 lambda_session: float = 0.0, lambda_item: float = 0.0, sigma: float = 0.05,
                 init_normal: bool = False, batch_size: int = 32, seed: int = 0):
        self.n_factors = _check_positive_int("n_factors", n_factors)
        self.n_epochs = _check_positive_int("n_epochs", n_epochs)
        self.learning_rate = _check_non_negative("learning_rate", learning_rate)
        self.lambda_session = _check_non_negative("lambda_session", lambda_session)
        self.lambda_item = _check_non_negative("lambda_item", lambda_item)
        self.sigma = _check_non_negative("sigma", sigma)
        self.init_normal = bool(init_normal)
        self.batch_size = _check_positive_int("batch_size", batch_size)
        self.seed = seed

    def fit(self, log: SessionLog) -> BPRMF:
        rng = np.random.default_rng(self.seed)
        shape_u = (log.n_sessions, self.n_factors)
        shape_i = (log.n_items, self.n_factors)
        if self.init_normal:
            session_f = rng.normal(0.0, self.sigma, shape_u)
            item_f = rng.normal(0.0, self.sigma, shape_i)
        else:
            session_f = rng.uniform(-self.sigma, self.sigma, shape_u)
            item_f = rng.uniform(-self.sigma, self.sigma, shape_i)
        session_of = np.repeat(np.arange(log.n_sessions), log.lengths)
        items = log.items.astype(np.int64)
        lr, bs = self.learning_rate, self.batch_size
        self.history_ = []
        for epoch in range(self.n_epochs):
            perm = rng.permutation(log.n_events)
            negatives = rng.integers(log.n_items, size=log.n_events)
            log_lik = 0.0
            for start in range(0, log.n_events, bs):
                events = perm[start:start + bs]
                u, p, n = session_of[events], items[events], negatives[start:start + bs]
                uf, pf, nf = session_f[u], item_f[p], item_f[n]  # (b, k) each
                x = np.einsum("bk,bk->b", uf, pf - nf)
                c = 1.0 / (1.0 + np.exp(x))[:, None]  # 1 - sigmoid(x), (b, 1)
                log_lik -= float(np.logaddexp(0.0, -x).sum())
                np.add.at(session_f, u, lr * (c * (pf - nf) - self.lambda_session * uf))
                np.add.at(item_f, p, lr * (c * uf - self.lambda_item * pf))
                np.add.at(item_f, n, lr * (-c * uf - self.lambda_item * nf))
            self.history_.append(log_lik / max(log.n_events, 1))
            logger.info("BPR-MF epoch %d: mean log sigmoid %.4f", epoch + 1, self.history_[-1])
        self.session_factors_ = session_f
        self.item_factors_ = item_f
        self.n_items = log.n_items
        return self

    def initial_state(self, batch_size: int):
        self._check_fitted()
        return np.zeros((batch_size, self.n_factors)), np.zeros(batch_size)

    def step(self, inputs, reset, state):
        self._check_fitted()
        inputs = self._check_inputs(inputs)
        keep = ~np.asarray(reset, dtype=bool)
        sums = state[0] * keep[:, None] + self.item_factors_[inputs]  # (B, k)
        counts = state[1] * keep + 1.0  # (B,)
        scores = (sums / counts[:, None]) @ self.item_factors_.T  # (B, n_items)
        return scores, (sums, counts)


BASELINES = {"pop": Pop, "spop": SessionPop, "itemknn": ItemKNN, "bprmf": BPRMF}


def make_baseline(name: str, **kwargs) -> Baseline:
    """A baseline by name (`pop`, `spop`, `itemknn`, `bprmf`) with constructor arguments."""
    if name not in BASELINES:
        raise ValueError(f"`name` should be one of {tuple(BASELINES)}. Received: {name!r}")
    return BASELINES[name](**kwargs)


def target_ranks(scores: np.ndarray, targets: np.ndarray, mode: str = "conservative"
                 ) -> np.ndarray:
    """float64 [B] rank of each target among all items; NumPy twin of
    `tf_gru4rec.evaluation.metrics.target_ranks`: 1 + (items scoring higher) + all
    (conservative), none (standard) or half (median) of the other items scoring the same.

    scores: [B, n_items]; targets: int [B].
    """
    _check_tie_mode(mode)
    target_scores = scores[np.arange(len(targets)), targets][:, None]  # (B, 1)
    higher = (scores > target_scores).sum(axis=1).astype(np.float64)
    if mode == "standard":
        return higher + 1.0
    ties = (scores == target_scores).sum(axis=1) - 1.0
    return higher + 1.0 + (ties if mode == "conservative" else 0.5 * ties)


def evaluate_baseline(baseline: Baseline, log: SessionLog, cutoffs: Iterable[int] = DEFAULT_CUTOFFS,
                      tie_mode: str = "conservative", batch_size: int | None = None
                      ) -> dict[str, float]:
    """Recall@K and MRR@K of a fitted baseline on the sessions of `log`, fed session-parallel
    exactly like `tf_gru4rec.evaluation.evaluate` (every event but a session's last is an input,
    the next event its target; all items ranked).

    `batch_size` slots (default: as many as keep one [B, n_items] score array near 2^22
    entries, at most 512). Returns {"recall@K", "mrr@K", "test_events", "eval_seconds"}.
    """
    _check_tie_mode(tie_mode)
    baseline._check_fitted()
    if log.n_items != baseline.n_items:
        raise ValueError(f"The log indexes {log.n_items} items, the baseline {baseline.n_items}")
    cutoffs = tuple(int(k) for k in cutoffs)
    if batch_size is None:
        batch_size = int(np.clip((1 << 22) // max(log.n_items, 1), 16, 512))
    start = time.perf_counter()
    steps = session_parallel_steps(log, batch_size)
    state = baseline.initial_state(batch_size)
    hits = {k: 0.0 for k in cutoffs}
    reciprocal = {k: 0.0 for k in cutoffs}
    n_events = 0
    for t in range(steps.n_steps):
        scores, state = baseline.step(steps.inputs[t], steps.reset[t], state)
        valid = steps.valid[t]
        targets = steps.targets[t]
        if not valid.all():
            scores, targets = scores[valid], targets[valid]
        ranks = target_ranks(scores, targets, tie_mode)
        for k in cutoffs:
            hit = ranks <= k
            hits[k] += float(hit.sum())
            reciprocal[k] += float((hit / ranks).sum())
        n_events += len(ranks)
    seconds = time.perf_counter() - start
    result = {}
    for k in cutoffs:
        result[f"recall@{k}"] = hits[k] / max(n_events, 1)
        result[f"mrr@{k}"] = reciprocal[k] / max(n_events, 1)
    result["test_events"] = n_events
    result["eval_seconds"] = seconds
    logger.info("%s: evaluated %d events in %.2fs: %s", baseline.name, n_events, seconds,
                {k: round(v, 4) for k, v in result.items() if "@" in k})
    return result


def run_baselines(train_log: SessionLog, test_log: SessionLog,
                  names: Sequence[str] = BASELINE_NAMES, cutoffs: Iterable[int] = DEFAULT_CUTOFFS,
                  tie_mode: str = "conservative", params: dict[str, dict] | None = None
                  ) -> dict[str, dict[str, float]]:
    """Fit each named baseline on `train_log` and evaluate it on `test_log` (same vocabulary).

    `params` maps a name to constructor arguments, e.g. {"itemknn": {"n_neighbors": 50}}.
    Returns {name: metrics of `evaluate_baseline` plus "fit_seconds"}.
    """
    _check_tie_mode(tie_mode)
    if train_log.n_items != test_log.n_items:
        raise ValueError(f"The train log indexes {train_log.n_items} items, the test log "
                         f"{test_log.n_items}: build both with the same vocabulary")
    params = params or {}
    cutoffs = tuple(cutoffs)
    results = {}
    for name in names:
        baseline = make_baseline(name, **params.get(name, {}))
        start = time.perf_counter()
        baseline.fit(train_log)
        fit_seconds = time.perf_counter() - start
        logger.info("%s: fitted in %.2fs", name, fit_seconds)
        results[name] = evaluate_baseline(baseline, test_log, cutoffs, tie_mode)
        results[name]["fit_seconds"] = fit_seconds
    return results
