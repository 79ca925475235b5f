"""The protocol of `prepare_log` run by DuckDB on tables larger than memory.

Same steps (the optional collapse of repeats first), same order, same report entries as
`tf_gru4rec.data.prepare_log.prepare_log` (which runs them with pandas): the fixed point of
the short-session and rare-item filters, the split(s) by session end (inclusive boundary),
the known-items restriction of the test (and validation) sessions. The tables hold
the columns `row` (int64, the event's 0-based row in the input file: the tie-break that keeps
the input order of equal times), `SessionId`, `ItemId`, `Time` (float64 seconds).

`run_protocol(con, "events", ...)` leaves the tables `train`, `test` (and `valid`) in `con`.
"""

from __future__ import annotations

import logging

from tf_gru4rec.data.io import DataError
from tf_gru4rec.data.prepare_log import protocol_parameters
from tf_gru4rec.data.preprocess import iso_time

logger = logging.getLogger(__name__)


def table_summary(con, table: str) -> dict:
    """Events, sessions, items and time range of a table (as `prepare_log.summary`)."""
    events, first, last = con.execute(
        f"SELECT count(*), min(Time), max(Time) FROM {table}").fetchall()[0]
    if events == 0:
        return {"events": 0, "sessions": 0, "items": 0}
    sessions, items = _distinct(con, table)
    return {"events": int(events), "sessions": sessions, "items": items,
            "first_time": float(first), "last_time": float(last)}


def run_protocol(con, table: str, test_seconds: float, valid_seconds: float = 0.0,
                 min_session_length: int = 2, min_item_support: int = 5,
                 test_start: float | None = None, valid_start: float | None = None,
                 collapse: bool = False) -> dict:
    """Filter `table` in place, split it into `train`, `test` (`valid`); the report as
    `prepare_log` gives it (input, parameters, steps, outputs).

    Raises:
      DataError: when a step leaves nothing (the message names the step).
    """
    parameters = protocol_parameters(test_seconds, valid_seconds, min_session_length,
                                     min_item_support, test_start, valid_start, collapse)
    report = {"input": table_summary(con, table), **parameters, "steps": []}
    steps = report["steps"]
    n_input = report["input"]["events"]
    counts = _counts(con, table)
    if collapse:
        counts = _collapse_repeats(con, table, counts, steps)
    counts = _drop_short(con, table, min_session_length, counts, steps)
    while True:
        n = counts[0]
        counts = _drop_rare(con, table, min_item_support, counts, steps)
        counts = _drop_short(con, table, min_session_length, counts, steps)
        if counts[0] == n:
            break
    if counts[0] == 0:
        raise DataError(f"the filters (sessions >= {min_session_length} events, items >= "
                        f"{min_item_support} events) leave no event of {n_input}")
    _split(con, table, "train", "test", test_seconds, "test", steps, test_start)
    names = ["train", "test"]
    has_valid = valid_seconds > 0 or valid_start is not None
    if has_valid:
        con.execute("ALTER TABLE train RENAME TO train_all")
        _split(con, "train_all", "train", "valid", valid_seconds, "validation", steps,
               valid_start)
        con.execute("DROP TABLE train_all")
        names.append("valid")
    _known(con, "test", "test", steps)
    if has_valid:
        _known(con, "valid", "validation", steps)
    report["outputs"] = {name: table_summary(con, name) for name in names}
    return report


def _distinct(con, table: str) -> tuple[int, int]:
    sessions = con.execute(f"SELECT count(*) FROM (SELECT DISTINCT SessionId FROM {table})"
                           ).fetchall()[0][0]
    items = con.execute(f"SELECT count(*) FROM (SELECT DISTINCT ItemId FROM {table})"
                        ).fetchall()[0][0]
    return int(sessions), int(items)


def _counts(con, table: str) -> tuple[int, int, int]:
    """(events, sessions, items) of `table`."""
    events = int(con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])
    return (events, *_distinct(con, table))


def _delete(con, table: str, where: str, step: str, before: tuple, steps: list) -> tuple:
    """Delete the rows matching `where` and record the step as `preprocess._record` does."""
    con.execute(f"DELETE FROM {table} WHERE {where}")
    after = _counts(con, table)
    entry = {"step": step, "events_removed": before[0] - after[0],
             "sessions_removed": before[1] - after[1], "items_removed": before[2] - after[2],
             "events_left": after[0]}
    logger.info("%s: removed %d events, %d sessions, %d items; %d events left", step,
                entry["events_removed"], entry["sessions_removed"], entry["items_removed"],
                after[0])
    steps.append(entry)
    return after


def _collapse_repeats(con, table: str, before: tuple, steps: list) -> tuple:
    """As `preprocess.collapse_repeats`: the events whose item is the previous event's in
    their session (by time, then input row)."""
    where = (f"row IN (SELECT row FROM (SELECT row, ItemId, lag(ItemId) OVER (PARTITION BY "
             f"SessionId ORDER BY Time, row) AS previous FROM {table}) "
             "WHERE ItemId = previous)")
    return _delete(con, table, where, "repeats of an item collapsed", before, steps)


def _drop_short(con, table: str, min_length: int, before: tuple, steps: list,
                step: str | None = None) -> tuple:
    where = (f"SessionId IN (SELECT SessionId FROM {table} GROUP BY SessionId "
             f"HAVING count(*) < {int(min_length)})")
    return _delete(con, table, where, step or f"sessions < {min_length} events", before, steps)


def _drop_rare(con, table: str, min_support: int, before: tuple, steps: list) -> tuple:
    where = (f"ItemId IN (SELECT ItemId FROM {table} GROUP BY ItemId "
             f"HAVING count(*) < {int(min_support)})")
    return _delete(con, table, where, f"items < {min_support} events", before, steps)


def _split(con, source: str, first: str, last: str, seconds: float, name: str,
           steps: list, start: float | None = None) -> None:
    """`first` = sessions of `source` ending before t_max - `seconds` (or `start`), `last` =
    the others (as `preprocess.split_by_session_end`, inclusive boundary)."""
    t_min, t_max = con.execute(f"SELECT min(Time), max(Time) FROM {source}").fetchall()[0]
    # the same float64 arithmetic as the pandas path
    cut = float(t_max) - seconds if start is None else float(start)
    con.execute(f"CREATE OR REPLACE TEMP TABLE split_ends AS SELECT SessionId FROM {source} "
                "GROUP BY SessionId HAVING max(Time) >= ?", [cut])
    con.execute(f"CREATE OR REPLACE TABLE {last} AS SELECT s.* FROM {source} s "
                "SEMI JOIN split_ends e ON s.SessionId = e.SessionId")
    con.execute(f"CREATE OR REPLACE TABLE {first} AS SELECT s.* FROM {source} s "
                "ANTI JOIN split_ends e ON s.SessionId = e.SessionId")
    con.execute("DROP TABLE split_ends")
    train, test = _counts(con, first), _counts(con, last)
    if train[0] == 0 or test[0] == 0:
        raise DataError(
            f"the {name} split: A split at {iso_time(cut)} leaves {train[0]} training and "
            f"{test[0]} test events: the log spans {iso_time(t_min)} to {iso_time(t_max)} "
            f"({float(t_max - t_min):.0f} s)")
    logger.info("split at %s: %d train events / %d sessions, %d test events / %d sessions",
                iso_time(cut), train[0], train[1], test[0], test[1])
    steps.append({"step": f"{name} split by session end", "cut_time": cut,
                  "cut_date": iso_time(cut), "train_events": train[0], "train_sessions": train[1],
                  "test_events": test[0], "test_sessions": test[1]})


def _known(con, table: str, name: str, steps: list) -> None:
    """Drop events of `table` whose item is not in `train`, then its sessions under 2 events."""
    before = _counts(con, table)
    where = "ItemId NOT IN (SELECT DISTINCT ItemId FROM train)"
    counts = _delete(con, table, where, f"{name}: items unknown to training", before, steps)
    counts = _drop_short(con, table, 2, counts, steps, step=f"{name}: sessions < 2 events")
    if counts[0] == 0:
        raise DataError(f"no {name} session of 2 or more events is left once items unknown to "
                        f"training are dropped ({before[0]} {name} events before)")
