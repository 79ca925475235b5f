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


PARQUET_MAGIC, GZIP_MAGIC = b"PAR1", b"\x1f\x8b"


def sniff_format(path: str | os.PathLike) -> str:
    """"parquet", "gzip" (gzip-compressed text) or "text", by the file's first bytes, not its
    name (a Parquet file named `.parquet.snappy`, a gzip file named `.csv`)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head == PARQUET_MAGIC:
        return "parquet"
    if head[:2] == GZIP_MAGIC:
        return "gzip"
    return "text"


def undecodable(path: str, error: UnicodeDecodeError) -> DataError:
    """The error for a file read as text that is not: names the file and the formats read."""
    return DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); "
                     "expected a text click log (optionally gzip-compressed) or a Parquet file")


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
        compression = "gzip" if sniff_format(path) == "gzip" else None
        try:
            frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False,
                                compression=compression)
        except UnicodeDecodeError as error:
            raise undecodable(path, error) from None
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


def validate_events(frame: pd.DataFrame, source: str = "<frame>", first_row: int = 1,
                    row_numbers: np.ndarray | None = None) -> pd.DataFrame:
    """Check and normalise an event frame with the standard columns.

    Ids that are all integers become int64; others stay strings. Time becomes float64 seconds.
    Raises `DataError` naming the source, the 1-based data row, the column and the value;
    `first_row` is the file's row number of the frame's first row (a chunk of a longer file);
    `row_numbers` [rows], when given, the file's row number of each row (rows filtered out).
    """
    if len(frame) == 0:
        raise DataError(f"{source}: the click log has no events")
    rows = (np.arange(len(frame)) + first_row if row_numbers is None
            else np.asarray(row_numbers))
    out = pd.DataFrame(index=pd.RangeIndex(len(frame)))
    for col in (SESSION, ITEM):
        out[col] = _normalise_ids(frame[col].to_numpy(), source, col, rows)
    out[TIME] = _parse_times(frame[TIME].to_numpy(), source, rows)
    logger.info(
        "%s: %d events, %d sessions, %d items", source, len(out),
        out[SESSION].nunique(), out[ITEM].nunique(),
    )
    return out


def normalise_ids(values: np.ndarray, source: str = "<ids>", col: str = ITEM) -> np.ndarray:
    """Ids as every reader here returns them: int64 when all are integers (numbers or their
    text), else strings (`validate_events` does the same to each id column)."""
    return _normalise_ids(np.asarray(values), source, col, np.arange(1, len(values) + 1))


def _detect_format(path: str) -> str:
    """Parquet by content (whatever the name); text files by name: csv, yoochoose or tsv."""
    name = path.lower().removesuffix(".gz")
    if sniff_format(path) == "parquet" or name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith(".csv"):
        return "csv"
    if os.path.basename(name).startswith("yoochoose-clicks") and name.endswith(".dat"):
        return "yoochoose"
    return "tsv"


def _first_bad_row(bad: np.ndarray) -> int:
    return int(np.flatnonzero(bad)[0])


def _normalise_ids(values: np.ndarray, source: str, col: str, rows: np.ndarray) -> np.ndarray:
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values) | (values != np.round(values))
        if bad.any():
            row = _first_bad_row(bad)
            raise DataError(
                f"{source}: row {rows[row]}, column {col!r}: expected an integer or "
                f"string id, got {values[row]!r}"
            )
        return values.astype(np.int64)
    as_str = pd.Series(values, dtype="string")
    empty = (as_str.isna() | (as_str.str.strip() == "")).to_numpy()
    if empty.any():
        row = _first_bad_row(empty)
        raise DataError(f"{source}: row {rows[row]}, column {col!r}: empty id")
    as_int = pd.to_numeric(as_str, errors="coerce")
    if not as_int.isna().any() and (as_int == np.round(as_int)).all():
        ints = as_str.astype("int64")
        return ints.to_numpy()
    return as_str.to_numpy(dtype=object)


def _parse_times(values: np.ndarray, source: str, rows: np.ndarray) -> np.ndarray:
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
            f"{source}: row {rows[row]}, column {TIME!r}: expected unix seconds or an "
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
