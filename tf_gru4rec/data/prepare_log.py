"""The GRU4Rec papers' protocol for any click log: filters, time split, known test items.

  0. optionally, collapse consecutive repeats of an item in a session into one event;
  1. drop sessions shorter than `min_session_length`, items with fewer than `min_item_support`
     events, and repeat both until nothing changes (a fixed point: every kept session and item
     satisfies both limits);
  2. the sessions ending in the last `test_seconds` (session end at or after
     t_max - test_seconds, or at or after the absolute time `test_start`) are the test set;
     with `valid_seconds` (or `valid_start`), the same split of the rest gives the validation
     set, and the remainder is the training set;
  3. test (and validation) events of items absent from the training set are dropped, then the
     sessions that became shorter than 2 events (as the RSC15 protocol does).

Every step's removals go to a JSON-ready report.
"""

from __future__ import annotations

import pandas as pd

from tf_gru4rec.data.io import ITEM, SESSION, TIME, DataError
from tf_gru4rec.data.preprocess import (
    collapse_repeats,
    filter_sessions_and_items,
    iso_time,
    restrict_to_known_items,
    sessions_sorted,
    split_by_session_end,
)

SECONDS_PER_DAY = 86_400.0


def prepare_log(events: pd.DataFrame, test_seconds: float, valid_seconds: float = 0.0,
                min_session_length: int = 2, min_item_support: int = 5,
                test_start: float | None = None, valid_start: float | None = None,
                collapse: bool = False) -> tuple[dict[str, pd.DataFrame], dict]:
    """Apply the protocol (module docstring) to a standard event frame.

    `test_start` / `valid_start` (unix seconds), when given, replace `test_seconds` /
    `valid_seconds`; `collapse` runs step 0.

    Returns:
      (frames, report): frames maps "train", "test" (and "valid" when `valid_seconds` > 0) to
      event frames sorted by session and time; report holds the input's size, the parameters,
      "steps" (one entry per step: what it removed) and "outputs" (each frame's size).
    Raises:
      DataError: when a step leaves nothing (the message names the step).
    """
    report = protocol_parameters(test_seconds, valid_seconds, min_session_length,
                                 min_item_support, test_start, valid_start, collapse)
    report = {"input": summary(events), **report, "steps": []}
    steps = report["steps"]
    data = collapse_repeats(events, steps) if collapse else events
    data = filter_sessions_and_items(data, min_session_length, min_item_support,
                                     iterate=True, report=steps)
    if len(data) == 0:
        raise DataError(f"the filters (sessions >= {min_session_length} events, items >= "
                        f"{min_item_support} events) leave no event of {len(events)}")
    train, test = _split(data, test_seconds, "test", steps, test_start)
    valid = None
    if valid_seconds > 0 or valid_start is not None:
        train, valid = _split(train, valid_seconds, "validation", steps, valid_start)
    frames = {"train": train, "test": _known(test, train, "test", steps)}
    if valid is not None:
        frames["valid"] = _known(valid, train, "validation", steps)
    frames = {name: sessions_sorted(frame) for name, frame in frames.items()}
    report["steps"] = [{k: (v.item() if hasattr(v, "item") else v) for k, v in entry.items()}
                       for entry in steps]
    report["outputs"] = {name: summary(frame) for name, frame in frames.items()}
    return frames, report


def protocol_parameters(test_seconds: float, valid_seconds: float, min_session_length: int,
                        min_item_support: int, test_start: float | None = None,
                        valid_start: float | None = None, collapse: bool = False) -> dict:
    """The protocol's parameters as `prepare.json` reports them (starts as ISO dates)."""
    report = {"test_seconds": float(test_seconds), "valid_seconds": float(valid_seconds)}
    for name, start in (("test_start", test_start), ("valid_start", valid_start)):
        if start is not None:
            report[name] = iso_time(start)
    return {**report, "collapse_repeats": bool(collapse),
            "min_session_length": int(min_session_length),
            "min_item_support": int(min_item_support)}


def _split(data: pd.DataFrame, seconds: float, name: str, steps: list,
           start: float | None = None):
    try:
        first, last = split_by_session_end(data, seconds, steps, cut=start)
    except ValueError as error:
        raise DataError(f"the {name} split: {error}") from None
    steps[-1]["step"] = f"{name} split by session end"
    return first, last


def _known(split: pd.DataFrame, train: pd.DataFrame, name: str, steps: list) -> pd.DataFrame:
    start = len(steps)
    kept = restrict_to_known_items(split, train, 2, steps)
    for entry in steps[start:]:
        entry["step"] = f"{name}: {entry['step'].removeprefix('test ')}"
    if len(kept) == 0:
        raise DataError(f"no {name} session of 2 or more events is left once items unknown to "
                        f"training are dropped ({len(split)} {name} events before)")
    return kept


def summary(events: pd.DataFrame) -> dict:
    """Events, sessions, items and time range of an event frame."""
    if len(events) == 0:
        return {"events": 0, "sessions": 0, "items": 0}
    return {"events": len(events), "sessions": int(events[SESSION].nunique()),
            "items": int(events[ITEM].nunique()), "first_time": float(events[TIME].min()),
            "last_time": float(events[TIME].max())}


def format_table(report: dict, labels: dict | None = None) -> str:
    """A short plain-text table: the rows read and what the row filters removed (when
    reported), the input, what each step removed, the split times and the outputs
    (`labels`: an output's name in the table, default "<name>.tsv")."""
    rows = []
    read = report.get("read")
    if read and read["row_filters"]:
        rows.append(("rows read", read["rows"], "", ""))
        rows += [(f"row filter {_filter_label(f)}", -f["rows_removed"], "", "")
                 for f in read["row_filters"]]
    rows.append(("input", *_counts(report["input"])))
    for entry in report["steps"]:
        if "events_removed" in entry:
            rows.append((entry["step"], -entry["events_removed"], -entry["sessions_removed"],
                         -entry["items_removed"]))
        elif "cut_date" in entry:
            rows.append((f"{entry['step'].removesuffix(' by session end')} at "
                         f"{entry['cut_date']}", "", "", ""))
    labels = labels or {}
    rows += [(labels.get(name, f"{name}.tsv"), *_counts(out))
             for name, out in report["outputs"].items()]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':{width}}  {'events':>9} {'sessions':>9} {'items':>7}"]
    lines += [f"{r[0]:{width}}  {r[1]:>9} {r[2]:>9} {r[3]:>7}" for r in rows]
    return "\n".join(lines)


def _filter_label(row_filter: dict) -> str:
    kind = "keep" if "keep" in row_filter else "drop"
    values = row_filter[kind]
    shown = ", ".join(values) if len(", ".join(values)) <= 40 else f"{len(values)} values"
    return f"{row_filter['column']} ({kind} {shown})"


def _counts(s: dict) -> tuple[int, int, int]:
    return s["events"], s["sessions"], s["items"]
