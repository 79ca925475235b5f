"""Session log: events grouped by session, ordered by time, items as dense indices."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd

from tf_gru4rec.data.io import ITEM, SESSION, TIME
from tf_gru4rec.data.vocabulary import UNKNOWN, ItemVocabulary

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SessionLog:
    """All events as one flat item array with per-session offsets.

    Attributes:
      items: int32 [n_events], item indices; session s is `items[offsets[s]:offsets[s+1]]`.
      offsets: int64 [n_sessions + 1].
      session_ids: [n_sessions] raw session ids.
      start_times: float64 [n_sessions], time of each session's first event.
      n_items: size of the item vocabulary the indices refer to.

    Sessions are ordered by start time (then id), events within a session by time (stable).
    """

    items: np.ndarray
    offsets: np.ndarray
    session_ids: np.ndarray
    start_times: np.ndarray
    n_items: int

    @classmethod
    def from_events(
        cls, events: pd.DataFrame, vocabulary: ItemVocabulary, drop_unknown: bool = True
    ) -> SessionLog:
        """Build from a standard event frame; items unknown to `vocabulary` are dropped
        (or raise `KeyError` if `drop_unknown` is False)."""
        items = vocabulary.lookup(events[ITEM].to_numpy())
        unknown = items == UNKNOWN
        if unknown.any():
            if not drop_unknown:
                bad = events[ITEM].to_numpy()[unknown][0]
                raise KeyError(f"Item id {bad!r} is not in the vocabulary")
            logger.info("Dropped %d events of items unknown to the vocabulary", unknown.sum())
        keep = ~unknown
        sessions = events[SESSION].to_numpy()[keep]
        times = events[TIME].to_numpy(dtype=np.float64)[keep]
        items = items[keep]
        codes, uniques = pd.factorize(sessions, sort=True)
        start = np.full(len(uniques), np.inf)
        np.minimum.at(start, codes, times)
        session_rank = np.lexsort((np.arange(len(uniques)), start))  # by start time, then id
        position = np.empty_like(session_rank)
        position[session_rank] = np.arange(len(session_rank))
        order = np.lexsort((times, position[codes]))
        counts = np.bincount(position[codes], minlength=len(uniques))
        offsets = np.zeros(len(uniques) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return cls(
            items=items[order].astype(np.int32),
            offsets=offsets,
            session_ids=np.asarray(uniques)[session_rank],
            start_times=start[session_rank],
            n_items=len(vocabulary),
        )

    @property
    def n_sessions(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_events(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> np.ndarray:
        """int64 [n_sessions] events per session."""
        return np.diff(self.offsets)

    @property
    def n_predictions(self) -> int:
        """Events that have a next event in their session (training steps, test predictions)."""
        return int(np.maximum(self.lengths - 1, 0).sum())

    def item_support(self) -> np.ndarray:
        """int64 [n_items] number of events of each item."""
        return np.bincount(self.items, minlength=self.n_items)

    def subset(self, sessions: np.ndarray) -> SessionLog:
        """The log of the sessions with indices `sessions` (int [k], increasing), whole."""
        sessions = np.asarray(sessions, dtype=np.int64)
        lengths = self.lengths[sessions]
        offsets = np.zeros(len(sessions) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
        positions = np.repeat(self.offsets[sessions], lengths) + within
        return SessionLog(items=self.items[positions], offsets=offsets,
                          session_ids=self.session_ids[sessions],
                          start_times=self.start_times[sessions], n_items=self.n_items)

    def session(self, s: int) -> np.ndarray:
        return self.items[self.offsets[s] : self.offsets[s + 1]]
