"""A seeded synthetic click log: the project's bundled default data.

The generator imitates the structure GRU4Rec is meant to exploit, so that a sequence model has
something to learn beyond POP and S-POP:

- **Items and popularity.** Items get random, unique, non-contiguous ids in
  `[100_000_000, 1_000_000_000)` and a Zipf-like weight `rank ** -popularity_exponent`, the ranks
  shuffled over the catalogue.
- **Intents.** The catalogue is split into `n_intents` clusters of random size (like shop
  categories). Each intent lists its items in a fixed random "browsing order".
- **Sessions.** A session starts at an item drawn by global popularity; its intent is that
  item's intent. Each following click is, with the given probabilities: a repeat of an item
  already clicked in the session (`repeat_probability`); an intent switch (`intent_drift`), i.e.
  a fresh item drawn by global popularity whose intent becomes the session's (it may be the same
  one again); otherwise a step inside the current intent: with probability 0.7 a *browse* to one
  of the next three items in the intent's browsing order (k -> k+1, k+2, k+3 with probabilities
  0.6, 0.25, 0.15, wrapping around), else a jump to an item of the intent drawn by popularity.
- **Lengths** are `2 + X`, X a mix of a geometric and a discretised log-normal law with the same
  mean (heavy tail), clipped at `max(50, 40 * mean_session_length)` events.
- **Times.** Session starts are uniform over `days` days from 2024-01-01 UTC; the gaps between
  clicks are log-normal (median about 50 s) and at least 1 s, rounded to milliseconds.

Generation is vectorised over sessions: all sessions take their t-th step together (sessions are
processed longest first, so the active ones are always a prefix), so the Python loop runs once
per position, not per event or per session. 10M events over 1M items take a few seconds.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd

from tf_gru4rec.data.io import ITEM, SESSION, TIME
from tf_gru4rec.data.preprocess import iso_time

logger = logging.getLogger(__name__)

_ID_LOW, _ID_HIGH = 100_000_000, 1_000_000_000
_MAX_ITEMS = 100_000_000  # a small share of the id range, so unique ids are quick to draw
_START_TIME = 1_704_067_200.0  # 2024-01-01T00:00:00Z
_SECONDS_PER_DAY = 86_400.0
_BROWSE_PROBABILITY = 0.7  # share of in-intent clicks that follow the browsing order
_BROWSE_STEPS = np.array([1, 2, 3])
_BROWSE_STEP_PROBABILITIES = np.array([0.6, 0.25, 0.15])
_LOGNORMAL_SHARE = 0.3  # share of sessions whose extra length is log-normal, not geometric
_LOGNORMAL_SIGMA = 1.2
_GAP_MEDIAN_SECONDS = 50.0
_GAP_SIGMA = 1.0


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the synthetic click log (see the module docstring for the model)."""

    n_items: int = 2_000
    n_sessions: int = 20_000
    n_intents: int = 50  # latent intents; each intent has its own item distribution
    mean_session_length: float = 5.0  # heavy-tailed lengths, min 2
    popularity_exponent: float = 1.0  # Zipf-like power law of item popularity
    intent_drift: float = 0.1  # per-click probability of switching intent within a session
    repeat_probability: float = 0.1  # chance to re-click an item already seen in the session
    days: float = 7.0  # time span of the log
    seed: int = 0

    def __post_init__(self):
        for name in ("n_items", "n_sessions", "n_intents"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"`{name}` should be a positive int. Received: {value!r}")
        if self.n_items > _MAX_ITEMS:
            raise ValueError(
                f"`n_items` should be at most {_MAX_ITEMS:_}. Received: {self.n_items!r}"
            )
        if self.n_intents > self.n_items:
            raise ValueError(
                "`n_intents` should be at most `n_items`. "
                f"Received: n_intents={self.n_intents}, n_items={self.n_items}"
            )
        if not self.mean_session_length >= 2:
            raise ValueError(
                "`mean_session_length` should be a float >= 2. "
                f"Received: {self.mean_session_length!r}"
            )
        if not self.popularity_exponent >= 0:
            raise ValueError(
                "`popularity_exponent` should be a float >= 0. "
                f"Received: {self.popularity_exponent!r}"
            )
        for name in ("intent_drift", "repeat_probability"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"`{name}` should be a float in [0, 1]. Received: {value!r}")
        if self.intent_drift + self.repeat_probability > 1:
            raise ValueError(
                "`intent_drift + repeat_probability` should be at most 1. Received: "
                f"{self.intent_drift!r} + {self.repeat_probability!r}"
            )
        if not self.days > 0:
            raise ValueError(f"`days` should be a positive float. Received: {self.days!r}")


@dataclasses.dataclass(frozen=True)
class _Catalogue:
    """Items laid out intent by intent, each intent in its browsing order ("slots")."""

    item_ids: np.ndarray  # (n_items,) int64 id of the item in each slot
    slot_intent: np.ndarray  # (n_items,) intent of each slot
    intent_start: np.ndarray  # (n_intents,) first slot of each intent
    intent_size: np.ndarray  # (n_intents,) slots per intent
    cum_weight: np.ndarray  # (n_items,) float64 cumulative popularity over slots

    def draw_global(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Slots drawn by global popularity."""
        u = rng.random(n) * self.cum_weight[-1]
        return np.minimum(np.searchsorted(self.cum_weight, u, side="right"), len(self.item_ids) - 1)

    def draw_in_intent(self, rng: np.random.Generator, intent: np.ndarray) -> np.ndarray:
        """One slot per entry of `intent`, drawn by popularity within that intent."""
        start = self.intent_start[intent]
        end = start + self.intent_size[intent]
        low = np.where(start > 0, self.cum_weight[start - 1], 0.0)
        high = self.cum_weight[end - 1]
        u = low + rng.random(len(intent)) * (high - low)
        slot = np.searchsorted(self.cum_weight, u, side="right")
        return np.clip(slot, start, end - 1)


def _unique_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """`n` distinct random int64 ids in [_ID_LOW, _ID_HIGH), in random order."""
    ids = np.empty(0, dtype=np.int64)
    while len(ids) < n:
        draw = rng.integers(_ID_LOW, _ID_HIGH, size=int(1.05 * (n - len(ids))) + 16)
        ids = np.unique(np.concatenate([ids, draw]))
    return rng.permutation(ids)[:n]


def _make_catalogue(config: SyntheticConfig, rng: np.random.Generator) -> _Catalogue:
    n_items, n_intents = config.n_items, config.n_intents
    # Intent sizes: uniform spacings (Dirichlet(1)), at least one item each.
    shares = rng.dirichlet(np.ones(n_intents))
    intent_size = 1 + rng.multinomial(n_items - n_intents, shares)
    intent_start = np.concatenate([[0], np.cumsum(intent_size)[:-1]])
    slot_intent = np.repeat(np.arange(n_intents, dtype=np.int32), intent_size)
    # Zipf-like weights with ranks shuffled over slots: popularity is independent of intent
    # and of the browsing order.
    ranks = rng.permutation(n_items) + 1
    weight = ranks.astype(np.float64) ** -config.popularity_exponent
    return _Catalogue(
        item_ids=_unique_ids(rng, n_items),
        slot_intent=slot_intent,
        intent_start=intent_start,
        intent_size=intent_size,
        cum_weight=np.cumsum(weight),
    )


def _session_lengths(config: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """Heavy-tailed lengths >= 2 with mean close to `mean_session_length`."""
    n = config.n_sessions
    extra_mean = config.mean_session_length - 2.0
    geometric = rng.geometric(1.0 / (1.0 + extra_mean), size=n) - 1
    # Log-normal with mean 1, scaled to `extra_mean`.
    lognormal = np.rint(
        extra_mean * rng.lognormal(-0.5 * _LOGNORMAL_SIGMA**2, _LOGNORMAL_SIGMA, size=n)
    )
    extra = np.where(rng.random(n) < _LOGNORMAL_SHARE, lognormal, geometric)
    max_length = max(50, int(40 * config.mean_session_length))
    return np.minimum(2 + extra.astype(np.int64), max_length)


def _walk(
    config: SyntheticConfig,
    catalogue: _Catalogue,
    lengths: np.ndarray,
    offsets: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """The slot of every event, sessions laid out at `offsets` (all sessions step together)."""
    n_events = int(lengths.sum())
    slots = np.empty(n_events, dtype=np.int32 if config.n_items < 2**31 else np.int64)
    # Longest sessions first: the sessions still active at step t are a prefix.
    order = np.argsort(-lengths, kind="stable")
    start = offsets[order]
    n_active = np.bincount(lengths, minlength=lengths.max() + 1)[::-1].cumsum()[::-1]
    p_repeat = config.repeat_probability
    p_switch = p_repeat + config.intent_drift
    p_browse = p_switch + (1.0 - p_switch) * _BROWSE_PROBABILITY

    current = catalogue.draw_global(rng, len(lengths))  # (n_sessions,) current slot
    slots[start] = current
    for t in range(1, int(lengths.max())):
        n = int(n_active[t + 1])
        pos = start[:n] + t
        cur = current[:n]
        u = rng.random(n)
        nxt = cur.copy()

        repeat = u < p_repeat
        earlier = (rng.random(int(repeat.sum())) * t).astype(np.int64)
        nxt[repeat] = slots[pos[repeat] - t + earlier]

        switch = (u >= p_repeat) & (u < p_switch)
        nxt[switch] = catalogue.draw_global(rng, int(switch.sum()))

        browse = (u >= p_switch) & (u < p_browse)
        b_cur = cur[browse]
        b_intent = catalogue.slot_intent[b_cur]
        b_start = catalogue.intent_start[b_intent]
        step = rng.choice(_BROWSE_STEPS, size=len(b_cur), p=_BROWSE_STEP_PROBABILITIES)
        nxt[browse] = b_start + (b_cur - b_start + step) % catalogue.intent_size[b_intent]

        jump = u >= p_browse
        nxt[jump] = catalogue.draw_in_intent(rng, catalogue.slot_intent[cur[jump]])

        slots[pos] = nxt
        current[:n] = nxt
    return slots


def generate_sessions(config: SyntheticConfig) -> pd.DataFrame:
    """Generate a synthetic click log.

    Returns:
      A frame with columns `SessionId` (int64, 1..n_sessions in order of session start),
      `ItemId` (int64, non-contiguous ids in [1e8, 1e9)) and `Time` (float64 unix seconds),
      sorted by `SessionId` then `Time`; every session has at least 2 events. The same
      config (seed included) always gives the same frame.
    """
    rng = np.random.default_rng(config.seed)
    catalogue = _make_catalogue(config, rng)
    lengths = _session_lengths(config, rng)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    slots = _walk(config, catalogue, lengths, offsets, rng)

    n_events = len(slots)
    session_start = np.sort(
        _START_TIME + rng.random(config.n_sessions) * config.days * _SECONDS_PER_DAY
    )
    gaps = np.maximum(1.0, rng.lognormal(np.log(_GAP_MEDIAN_SECONDS), _GAP_SIGMA, size=n_events))
    gaps[offsets] = 0.0
    elapsed = np.cumsum(gaps)
    elapsed -= np.repeat(elapsed[offsets], lengths)
    times = np.round(np.repeat(session_start, lengths) + elapsed, 3)

    events = pd.DataFrame(
        {
            SESSION: np.repeat(np.arange(1, config.n_sessions + 1, dtype=np.int64), lengths),
            ITEM: catalogue.item_ids[slots],
            TIME: times,
        }
    )
    logger.info(
        "Generated %d events in %d sessions; %d of %d items clicked (seed %d)",
        n_events,
        config.n_sessions,
        np.count_nonzero(np.bincount(slots, minlength=config.n_items)),
        config.n_items,
        config.seed,
    )
    return events


def train_test_split_synthetic(
    events: pd.DataFrame, test_days: float = 1.0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split by session end time, as in the GRU4Rec RSC15 protocol.

    Sessions that end within the last `test_days` days of the log are the test set. Test events
    of items absent from train are dropped, then test sessions with fewer than 2 events.

    Returns:
      `(train, test)` frames with the columns of `events` and fresh indices.
    """
    if not test_days > 0:
        raise ValueError(f"`test_days` should be a positive float. Received: {test_days!r}")
    missing = [c for c in (SESSION, ITEM, TIME) if c not in events.columns]
    if missing:
        raise ValueError(
            f"`events` should have columns {SESSION}, {ITEM}, {TIME}. Missing: {missing}"
        )
    session_end = events.groupby(SESSION)[TIME].transform("max").to_numpy()
    cut = events[TIME].max() - test_days * _SECONDS_PER_DAY
    is_test = session_end >= cut
    train = events[~is_test].reset_index(drop=True)
    test = events[is_test]
    test = test[test[ITEM].isin(train[ITEM].unique())]
    test_lengths = test.groupby(SESSION)[SESSION].transform("size").to_numpy()
    test = test[test_lengths >= 2].reset_index(drop=True)
    logger.info(
        "Split at %s: train %d events / %d sessions, test %d events / %d sessions",
        iso_time(cut),
        len(train),
        train[SESSION].nunique(),
        len(test),
        test[SESSION].nunique(),
    )
    return train, test
