"""Preprocessing of event frames as in the GRU4Rec papers (SPEC.md, "Data protocol").

Each step returns the filtered frame and logs what it removed; `report` lists collect the same
as dicts for scripts.
"""

from __future__ import annotations

import datetime
import logging

import numpy as np
import pandas as pd

from tf_gru4rec.data.io import ITEM, SESSION, TIME

logger = logging.getLogger(__name__)


def iso_time(seconds: float) -> str:
    """Unix seconds as an ISO 8601 UTC date-time to the second, e.g. 2018-11-08T00:00:00+00:00."""
    return datetime.datetime.fromtimestamp(float(seconds), datetime.UTC).isoformat(
        timespec="seconds")


def _record(report: list | None, step: str, before: pd.DataFrame, after: pd.DataFrame) -> None:
    entry = {
        "step": step,
        "events_removed": len(before) - len(after),
        "sessions_removed": before[SESSION].nunique() - after[SESSION].nunique(),
        "items_removed": before[ITEM].nunique() - after[ITEM].nunique(),
        "events_left": len(after),
    }
    logger.info(
        "%s: removed %d events, %d sessions, %d items; %d events left", step,
        entry["events_removed"], entry["sessions_removed"], entry["items_removed"], len(after),
    )
    if report is not None:
        report.append(entry)


def drop_short_sessions(events: pd.DataFrame, min_length: int = 2, report=None) -> pd.DataFrame:
    """Drop sessions with fewer than `min_length` events."""
    lengths = events.groupby(SESSION)[SESSION].transform("size")
    out = events[lengths.to_numpy() >= min_length]
    _record(report, f"sessions < {min_length} events", events, out)
    return out


def drop_rare_items(events: pd.DataFrame, min_support: int = 5, report=None) -> pd.DataFrame:
    """Drop events of items with fewer than `min_support` events."""
    support = events.groupby(ITEM)[ITEM].transform("size")
    out = events[support.to_numpy() >= min_support]
    _record(report, f"items < {min_support} events", events, out)
    return out


def filter_sessions_and_items(
    events: pd.DataFrame,
    min_session_length: int = 2,
    min_item_support: int = 5,
    iterate: bool = True,
    report=None,
) -> pd.DataFrame:
    """Short sessions, then rare items, then short sessions again; repeat until nothing changes
    if `iterate` (the original script does one round)."""
    events = drop_short_sessions(events, min_session_length, report)
    while True:
        n = len(events)
        events = drop_rare_items(events, min_item_support, report)
        events = drop_short_sessions(events, min_session_length, report)
        if not iterate or len(events) == n:
            return events


def time_split(events: pd.DataFrame, test_seconds: float, report=None):
    """Split by session end time: sessions ending in the last `test_seconds` are the test set.

    Returns (train, test) frames.
    """
    end = events.groupby(SESSION)[TIME].max()
    cut = events[TIME].max() - test_seconds
    test_sessions = end.index[end.to_numpy() > cut]
    is_test = events[SESSION].isin(test_sessions).to_numpy()
    train, test = events[~is_test], events[is_test]
    logger.info(
        "time split at %.0f: %d train events / %d sessions, %d test events / %d sessions",
        cut, len(train), train[SESSION].nunique(), len(test), test[SESSION].nunique(),
    )
    if report is not None:
        report.append({"step": "time split", "cut_time": float(cut), "train_events": len(train),
                       "test_events": len(test)})
    return train, test


def split_by_session_end(events: pd.DataFrame, test_seconds: float | None,
                         report: list | None = None, cut: float | None = None
                         ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test): test = sessions whose last event is at or after the cut, t_max -
    `test_seconds` (or `cut`, unix seconds, when given).

    The boundary is inclusive, as in the original script (`preprocess.time_split` leaves a
    session ending exactly at the cut in the training set).
    """
    if cut is None and not (test_seconds is not None and test_seconds > 0):
        raise ValueError(f"`test_seconds` should be a positive number. Received: {test_seconds!r}")
    end = events.groupby(SESSION)[TIME].transform("max").to_numpy()
    cut = float(events[TIME].max()) - test_seconds if cut is None else float(cut)
    is_test = end >= cut
    train, test = events[~is_test], events[is_test]
    if len(train) == 0 or len(test) == 0:
        raise ValueError(
            f"A split at {iso_time(cut)} leaves {len(train)} training and {len(test)} test "
            f"events: the log spans {iso_time(events[TIME].min())} to "
            f"{iso_time(events[TIME].max())} "
            f"({float(events[TIME].max() - events[TIME].min()):.0f} s)")
    logger.info("split at %s: %d train events / %d sessions, %d test events / %d sessions",
                iso_time(cut), len(train), train[SESSION].nunique(), len(test),
                test[SESSION].nunique())
    if report is not None:
        report.append({"step": "split by session end", "cut_time": cut,
                       "cut_date": iso_time(cut), "train_events": len(train),
                       "train_sessions": int(train[SESSION].nunique()),
                       "test_events": len(test), "test_sessions": int(test[SESSION].nunique())})
    return train, test


def collapse_repeats(events: pd.DataFrame, report: list | None = None) -> pd.DataFrame:
    """Drop each event whose item is the item of the event before it in its session (by
    time; equal times keep the frame's order): a run of clicks on one item becomes one."""
    codes = pd.factorize(events[SESSION])[0]
    order = np.lexsort((events[TIME].to_numpy(), codes))
    items = pd.factorize(events[ITEM])[0][order]
    sessions = codes[order]
    repeat = np.zeros(len(events), dtype=bool)
    repeat[order[1:]] = (items[1:] == items[:-1]) & (sessions[1:] == sessions[:-1])
    out = events[~repeat]
    _record(report, "repeats of an item collapsed", events, out)
    return out


def restrict_to_known_items(
    test: pd.DataFrame, train: pd.DataFrame, min_session_length: int = 2, report=None
) -> pd.DataFrame:
    """Drop test events of items absent from `train`, then test sessions that became short."""
    known = test[ITEM].isin(pd.unique(train[ITEM])).to_numpy()
    out = test[known]
    _record(report, "test items unknown to training", test, out)
    return drop_short_sessions(out, min_session_length, report)


def sessions_sorted(events: pd.DataFrame) -> pd.DataFrame:
    """Events sorted by session, then time (stable)."""
    order = np.lexsort((events[TIME].to_numpy(), pd.factorize(events[SESSION], sort=True)[0]))
    return events.iloc[order].reset_index(drop=True)
