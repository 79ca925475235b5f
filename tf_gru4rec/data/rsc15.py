"""The RSC15 (YooChoose clicks) protocol of the GRU4Rec papers (SPEC.md, "Data protocol").

As the original GRU4Rec repository's `examples/rsc15/preprocess.py` does it:

  1. drop sessions with fewer than 2 events, then items with fewer than 5 events, then
     sessions with fewer than 2 events again (one round, not repeated until stable);
  2. split by session end: sessions whose last event is at or after `t_max - test_seconds`
     (t_max = the last event of the filtered log) are the test set, the rest `train_full`;
  3. drop test events of items that never occur in `train_full`, then test sessions with
     fewer than 2 events;
  4. the same split once more inside `train_full` gives `train_tr` and `train_valid` (the
     validation set for tuning; its last day plays the test day).

Times are read as UTC (the original parses the ISO strings in local time: a constant shift
that does not change the split, apart from daylight-saving jumps).
"""

from __future__ import annotations

import logging
import os

import pandas as pd

from tf_gru4rec.data.io import ITEM, SESSION, TIME, write_events
from tf_gru4rec.data.preprocess import (  # noqa: F401  (split_by_session_end: re-exported)
    filter_sessions_and_items,
    restrict_to_known_items,
    split_by_session_end,
)

logger = logging.getLogger(__name__)

SECONDS_PER_DAY = 86_400.0
SPLITS = ("train_full", "test", "train_tr", "train_valid")


def prepare_rsc15(events: pd.DataFrame, test_seconds: float = SECONDS_PER_DAY,
                  min_session_length: int = 2, min_item_support: int = 5
                  ) -> tuple[dict[str, pd.DataFrame], dict]:
    """Apply the protocol (module docstring) to a standard event frame of raw clicks.

    Returns:
      (frames, report): frames maps "train_full", "test", "train_tr", "train_valid" to event
      frames in the input's row order; report is a JSON-ready dict with the removals of each
      step ("filter", "test_split", "valid_split": lists of step entries) and the size of
      each output ("outputs").
    """
    report = {"input": _summary(events), "test_seconds": float(test_seconds),
              "min_session_length": int(min_session_length),
              "min_item_support": int(min_item_support),
              "filter": [], "test_split": [], "valid_split": []}
    data = filter_sessions_and_items(events, min_session_length, min_item_support,
                                     iterate=False, report=report["filter"])
    train_full, test = split_by_session_end(data, test_seconds, report["test_split"])
    test = restrict_to_known_items(test, train_full, min_session_length, report["test_split"])
    train_tr, valid = split_by_session_end(train_full, test_seconds, report["valid_split"])
    valid = restrict_to_known_items(valid, train_tr, min_session_length, report["valid_split"])
    frames = {"train_full": train_full, "test": test, "train_tr": train_tr,
              "train_valid": valid}
    for name in ("filter", "test_split", "valid_split"):
        report[name] = [_plain(entry) for entry in report[name]]
    report["outputs"] = {name: _summary(frame) for name, frame in frames.items()}
    return frames, report


def write_rsc15(frames: dict[str, pd.DataFrame], out_dir: str, prefix: str = "rsc15",
                suffix: str = ".txt") -> dict[str, str]:
    """Write the frames as `<out_dir>/<prefix>_<split><suffix>` (tab-separated, header
    `SessionId ItemId Time`, the GRU4Rec convention); returns {split: path}."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for name in SPLITS:
        paths[name] = os.path.join(out_dir, f"{prefix}_{name}{suffix}")
        write_events(frames[name], paths[name])
    return paths


def _summary(events: pd.DataFrame) -> dict:
    if len(events) == 0:
        return {"events": 0, "sessions": 0, "items": 0}
    return {"events": len(events), "sessions": int(events[SESSION].nunique()),
            "items": int(events[ITEM].nunique()), "first_time": float(events[TIME].min()),
            "last_time": float(events[TIME].max())}


def _plain(entry: dict) -> dict:
    """A report entry with NumPy scalars turned into Python numbers (for JSON)."""
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in entry.items()}
