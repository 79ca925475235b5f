"""Read click logs (TSV/CSV/Parquet or raw YooChoose) into a validated event frame.

Every reader returns a `pandas.DataFrame` with the standard columns `SessionId`, `ItemId`,
`Time` (float64, seconds). Validation happens here and only here: later steps trust the frame.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

SESSION, ITEM, TIME = "SessionId", "ItemId", "Time"
STANDARD_COLUMNS = (SESSION, ITEM, TIME)


class DataError(ValueError):
    """A click log that cannot be used; the message names file, row, column and value."""


def read_events(
    path: str | os.PathLike,
    session_col: str = SESSION,
    item_col: str = ITEM,
    time_col: str = TIME,
    fmt: str = "auto",
    sep: str | None = None,
) -> pd.DataFrame:
    """Read a click log into a frame with columns `SessionId`, `ItemId`, `Time`.

    Args:
      path: a `.tsv`/`.txt`/`.csv`/`.parquet` file (optionally `.gz`), or a raw YooChoose
        `yoochoose-clicks.dat` file (`fmt="yoochoose"`, or detected by its name).
      session_col, item_col, time_col: column names in the file.
      fmt: "auto", "csv", "tsv", "parquet" or "yoochoose".
      sep: field separator for text files; default by extension (tab for .tsv/.txt/.dat).

    Item and session ids keep their type (integers or strings). `Time` may hold numbers (unix
    seconds) or date-time strings (ISO 8601), which are converted to float seconds.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Click log not found: {path!r}")
    fmt = _detect_format(path) if fmt == "auto" else fmt
    if fmt == "yoochoose":
        return read_yoochoose_clicks(path)
    if fmt == "parquet":
        frame = pd.read_parquet(path)
    elif fmt in ("csv", "tsv"):
        if sep is None:
            sep = "," if fmt == "csv" else "\t"
        frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    else:
        raise ValueError(
            f"`fmt` should be one of auto, csv, tsv, parquet, yoochoose. Received: {fmt!r}"
        )
    missing = [c for c in (session_col, item_col, time_col) if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing}; the file has columns {list(frame.columns)}. "
            "Set the column names (session_col/item_col/time_col or --session-col/...)."
        )
    frame = frame[[session_col, item_col, time_col]]
    frame.columns = list(STANDARD_COLUMNS)
    return validate_events(frame, source=path)


def read_yoochoose_clicks(path: str | os.PathLike) -> pd.DataFrame:
    """Read raw RecSys Challenge 2015 clicks: no header, `session,ISO time,item,category`."""
    path = os.fspath(path)
    frame = pd.read_csv(
        path, sep=",", header=None, usecols=[0, 1, 2], dtype=str, keep_default_na=False,
        names=[SESSION, "Timestamp", ITEM],
    )
    frame = frame[[SESSION, ITEM, "Timestamp"]].rename(columns={"Timestamp": TIME})
    return validate_events(frame, source=path)


def validate_events(frame: pd.DataFrame, source: str = "<frame>", first_row: int = 1
                    ) -> pd.DataFrame:
    """Check and normalise an event frame with the standard columns.

    Ids that are all integers become int64; others stay strings. Time becomes float64 seconds.
    Raises `DataError` naming the source, the 1-based data row, the column and the value;
    `first_row` is the file's row number of the frame's first row (a chunk of a longer file).
    """
    if len(frame) == 0:
        raise DataError(f"{source}: the click log has no events")
    out = pd.DataFrame(index=pd.RangeIndex(len(frame)))
    for col in (SESSION, ITEM):
        out[col] = _normalise_ids(frame[col].to_numpy(), source, col, first_row)
    out[TIME] = _parse_times(frame[TIME].to_numpy(), source, first_row)
    logger.info(
        "%s: %d events, %d sessions, %d items", source, len(out),
        out[SESSION].nunique(), out[ITEM].nunique(),
    )
    return out


def _detect_format(path: str) -> str:
    name = path.lower().removesuffix(".gz")
    if name.endswith(".parquet") or name.endswith(".pq"):
        return "parquet"
    if name.endswith(".csv"):
        return "csv"
    if os.path.basename(name).startswith("yoochoose-clicks") and name.endswith(".dat"):
        return "yoochoose"
    return "tsv"


def _first_bad_row(bad: np.ndarray) -> int:
    return int(np.flatnonzero(bad)[0])


def _normalise_ids(values: np.ndarray, source: str, col: str, first_row: int = 1) -> np.ndarray:
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values) | (values != np.round(values))
        if bad.any():
            row = _first_bad_row(bad)
            raise DataError(
                f"{source}: row {row + first_row}, column {col!r}: expected an integer or "
                f"string id, got {values[row]!r}"
            )
        return values.astype(np.int64)
    as_str = pd.Series(values, dtype="string")
    empty = (as_str.isna() | (as_str.str.strip() == "")).to_numpy()
    if empty.any():
        row = _first_bad_row(empty)
        raise DataError(f"{source}: row {row + first_row}, column {col!r}: empty id")
    as_int = pd.to_numeric(as_str, errors="coerce")
    if not as_int.isna().any() and (as_int == np.round(as_int)).all():
        ints = as_str.astype("int64")
        return ints.to_numpy()
    return as_str.to_numpy(dtype=object)


def _parse_times(values: np.ndarray, source: str, first_row: int = 1) -> np.ndarray:
    if values.dtype.kind in "iuf":
        times = values.astype(np.float64)
    else:
        as_str = pd.Series(values, dtype="string")
        numeric = pd.to_numeric(as_str, errors="coerce")
        if numeric.notna().mean() >= 0.5:  # a numeric column with some bad values
            times = numeric.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            parsed = pd.to_datetime(as_str, errors="coerce", utc=True, format="ISO8601")
            epoch = pd.Timestamp(0, tz="UTC")
            times = ((parsed - epoch) / pd.Timedelta(seconds=1)).to_numpy(
                dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(times)
    if bad.any():
        row = _first_bad_row(bad)
        raise DataError(
            f"{source}: row {row + first_row}, column {TIME!r}: expected unix seconds or an "
            f"ISO 8601 date-time, got {values[row]!r}"
        )
    return times


def write_events(frame: pd.DataFrame, path: str | os.PathLike,
                 columns: Sequence[str] = STANDARD_COLUMNS) -> None:
    """Write an event frame in the GRU4Rec convention (tab-separated with a header) or Parquet."""
    path = os.fspath(path)
    if path.endswith(".parquet"):
        frame[list(columns)].to_parquet(path, index=False)
    else:
        frame[list(columns)].to_csv(path, sep="\t", index=False)
