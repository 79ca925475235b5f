"""Read an arbitrary click log: detected separator, named columns, several time formats.

The time of an event may be one column of unix seconds, unix milliseconds or ISO 8601
strings, or a date column plus an offset column (seconds, milliseconds, minutes or hours
after the date: a within-day or within-session offset). Returns the standard event frame of
`tf_gru4rec.data.io` (`SessionId`, `ItemId`, `Time` in float seconds).

The format is read from the file's first bytes, whatever its name: text (with a detected
separator), gzip-compressed text, or Parquet. Row filters (`row_filter.RowFilter`) apply to
the text of the rows as read, before any check of ids and times.
"""

from __future__ import annotations

import gzip
import itertools
import os
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd

from tf_gru4rec.data.io import (
    ITEM,
    SESSION,
    TIME,
    DataError,
    sniff_format,
    undecodable,
    validate_events,
)
from tf_gru4rec.data.row_filter import RowFilter

SEPARATORS = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe"}
OFFSET_UNITS = {"s": 1.0, "ms": 1e-3, "min": 60.0, "h": 3600.0}
TIME_UNITS = ("auto", "s", "ms")
# Unix times above this are milliseconds: 1e11 s is the year 5138, 1e11 ms is 1973.
_MS_THRESHOLD = 1e11


def detect_separator(path: str, sample_lines: int = 50) -> str:
    """The separator among tab, comma, semicolon and pipe that splits the header and the first
    lines of `path` into the same number (> 1) of fields; the most fields wins."""
    opener = gzip.open if sniff_format(path) == "gzip" else open
    with opener(path, "rt", errors="replace") as f:
        lines = [line.rstrip("\r\n") for line in itertools.islice(f, sample_lines)]
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise DataError(f"{path}: no lines to detect the separator from")
    counts = {sep: [line.count(sep) for line in lines] for sep in SEPARATORS}
    consistent = [sep for sep, c in counts.items() if c[0] > 0 and len(set(c)) == 1]
    candidates = consistent or [sep for sep, c in counts.items() if c[0] > 0]
    if not candidates:
        raise DataError(f"{path}: the header {lines[0][:80]!r} holds no tab, comma, semicolon "
                        "or pipe; give the separator with --sep")
    return max(candidates, key=lambda sep: counts[sep][0])  # ties: the order of SEPARATORS


def read_raw_log(
    path: str | os.PathLike,
    session_col: str = SESSION,
    item_col: str = ITEM,
    time_col: str | None = TIME,
    sep: str | None = None,
    time_unit: str = "auto",
    date_col: str | None = None,
    offset_col: str | None = None,
    offset_unit: str = "s",
    row_filters: Sequence[RowFilter] = (),
    stats: dict | None = None,
) -> pd.DataFrame:
    """Read a text (or Parquet) click log with a header into the standard event frame.

    Args:
      path: a text file (optionally gzip-compressed) with a header line, or a Parquet file
        (recognised by content, whatever the name).
      session_col, item_col: column names of the session and item ids.
      time_col: column of the time (unix seconds/milliseconds or ISO 8601); not used when
        `date_col` is given.
      sep: field separator; None detects it (`detect_separator`).
      time_unit: "s", "ms" or "auto" (numbers above 1e11 are milliseconds).
      date_col, offset_col: the time as a date (ISO 8601) plus an offset in `offset_unit`
        ("s", "ms", "min" or "h"); the offset column is optional.
      row_filters: rows kept only when every filter keeps them.
      stats: filled with "rows_read" and, per filter, "rows_removed" (see `iter_raw_log`).
    """
    chunks = iter_raw_log(path, session_col, item_col, time_col, sep, time_unit, date_col,
                          offset_col, offset_unit, chunk_rows=None, row_filters=row_filters,
                          stats=stats)
    return next(chunks)[1]


def iter_raw_log(
    path: str | os.PathLike,
    session_col: str = SESSION,
    item_col: str = ITEM,
    time_col: str | None = TIME,
    sep: str | None = None,
    time_unit: str = "auto",
    date_col: str | None = None,
    offset_col: str | None = None,
    offset_unit: str = "s",
    chunk_rows: int | None = 100_000,
    row_filters: Sequence[RowFilter] = (),
    stats: dict | None = None,
) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """`read_raw_log` by chunks of `chunk_rows` rows (None: the whole file at once).

    Yields (raw, events) per chunk: the chunk's text columns [rows] as read (the rows the
    filters keep), and its standard event frame. Errors name the row in the whole file.
    `time_unit="auto"` is decided once, by the bulk (median) of the first chunk holding kept
    rows, for the whole file. Each chunk's ids are int64 when all of its ids are integers
    (the caller decides the file's type from all chunks, see `prepare_shards`). `stats`, when
    given, is filled as the chunks are read: {"rows_read": int, "rows_removed": [int per
    filter]} (a row counts for the first filter that removes it).
    """
    path = os.fspath(path)
    _check_options(time_unit, offset_unit, date_col, offset_col)
    stats = {} if stats is None else stats
    stats.update(rows_read=0, rows_removed=[0] * len(row_filters))
    if sniff_format(path) == "parquet":
        seen, frames = "Parquet", _parquet_frames(path, chunk_rows)
    else:
        sep = detect_separator(path) if sep is None else sep
        seen = SEPARATORS.get(sep, repr(sep))
        frames = _csv_frames(path, sep, chunk_rows)
    wanted = [session_col, item_col, *([date_col, offset_col] if date_col else [time_col]),
              *(f.column for f in row_filters)]
    first_row, n_chunks = 1, 0
    for frame in frames:
        if first_row == 1:
            _check_columns(frame, list(dict.fromkeys(c for c in wanted if c)), path, seen)
        rows = np.arange(first_row, first_row + len(frame))
        first_row += len(frame)
        stats["rows_read"] += len(frame)
        frame, rows = _filtered(frame, rows, row_filters, stats["rows_removed"])
        if len(frame) == 0:
            continue
        if not date_col and time_unit == "auto":
            time_unit = _resolve_unit(frame[time_col], time_unit)
        if date_col:
            times = _date_plus_offset(frame, date_col, offset_col, OFFSET_UNITS[offset_unit],
                                      path, rows)
        else:
            times = _unix_or_iso(frame[time_col], time_unit)
        events = pd.DataFrame({SESSION: frame[session_col].to_numpy(),
                               ITEM: frame[item_col].to_numpy(), TIME: times})
        yield frame, validate_events(events, source=path, row_numbers=rows)
        n_chunks += 1
    if n_chunks == 0:
        kept = (f" kept by the row filters ({'; '.join(f.describe() for f in row_filters)})"
                if row_filters and stats["rows_read"] else "")
        raise DataError(f"{path}: the click log has no events{kept}")


def _filtered(frame: pd.DataFrame, rows: np.ndarray, row_filters: Sequence[RowFilter],
              removed: list) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows of `frame` (and their file row numbers) every filter keeps; `removed[k]` +=
    the rows filter k removed first."""
    if not row_filters:
        return frame, rows
    keep = np.ones(len(frame), dtype=bool)
    for k, row_filter in enumerate(row_filters):
        kept = row_filter.mask(frame)
        removed[k] += int((keep & ~kept).sum())
        keep &= kept
    return frame[keep].reset_index(drop=True), rows[keep]


def _check_options(time_unit: str, offset_unit: str, date_col, offset_col) -> None:
    if time_unit not in TIME_UNITS:
        raise ValueError(f"`time_unit` should be one of {TIME_UNITS}. Received: {time_unit!r}")
    if offset_unit not in OFFSET_UNITS:
        raise ValueError(f"`offset_unit` should be one of {tuple(OFFSET_UNITS)}. "
                         f"Received: {offset_unit!r}")
    if offset_col and not date_col:
        raise ValueError("an offset column (--offset-col) needs a date column (--date-col)")


def _parquet_frames(path: str, chunk_rows: int | None) -> Iterator[pd.DataFrame]:
    if chunk_rows is None:
        yield pd.read_parquet(path).astype(str)
        return
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as f:
        for batch in f.iter_batches(batch_size=chunk_rows):
            yield batch.to_pandas().astype(str)


def _csv_frames(path: str, sep: str, chunk_rows: int | None) -> Iterator[pd.DataFrame]:
    options = {"sep": sep, "dtype": str, "keep_default_na": False,
               "compression": "gzip" if sniff_format(path) == "gzip" else None}
    try:
        if chunk_rows is None:
            yield pd.read_csv(path, **options)
            return
        with pd.read_csv(path, chunksize=chunk_rows, **options) as reader:
            yield from reader
    except UnicodeDecodeError as error:
        raise undecodable(path, error) from None


def _check_columns(frame: pd.DataFrame, wanted: list, path: str, seen: str) -> None:
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; the file has columns "
                        f"{list(frame.columns)} (separator: {seen}). Set the column names "
                        "(--session-col, --item-col, --time-col or --date-col/--offset-col) "
                        "or the separator (--sep)")


def _resolve_unit(column: pd.Series, unit: str) -> str:
    """"s" or "ms" for a numeric column ("auto": decided by the bulk of the values, their
    median: above 1e11 is milliseconds; a stray 0 or huge value does not flip it)."""
    if unit != "auto" or len(column) == 0:
        return "s" if unit == "auto" else unit
    numeric = pd.to_numeric(column, errors="coerce")
    if numeric.notna().mean() < 0.5:
        return "s"  # ISO 8601 strings: no unit
    values = numeric.to_numpy(dtype=np.float64, na_value=np.nan)
    return "ms" if np.nanmedian(values) > _MS_THRESHOLD else "s"


def _unix_or_iso(column: pd.Series, unit: str) -> np.ndarray:
    """Numbers scaled to seconds; anything else is left for `validate_events` (ISO 8601)."""
    numeric = pd.to_numeric(column, errors="coerce")
    if numeric.notna().mean() < 0.5:
        return column.to_numpy()
    values = numeric.to_numpy(dtype=np.float64, na_value=np.nan)
    if unit == "ms":
        values = values / 1000.0
    return np.where(numeric.isna().to_numpy(), column.to_numpy(dtype=object), values)


def _date_plus_offset(frame: pd.DataFrame, date_col: str, offset_col: str | None,
                      scale: float, path: str, rows: np.ndarray) -> np.ndarray:
    dates = pd.to_datetime(frame[date_col], errors="coerce", utc=True, format="ISO8601")
    seconds = ((dates - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(
        dtype=np.float64, na_value=np.nan)
    _check_finite(seconds, frame[date_col], path, date_col, "an ISO 8601 date", rows)
    if offset_col:
        offsets = pd.to_numeric(frame[offset_col], errors="coerce").to_numpy(
            dtype=np.float64, na_value=np.nan)
        _check_finite(offsets, frame[offset_col], path, offset_col, "a number", rows)
        seconds = seconds + offsets * scale
    return seconds


def _check_finite(values: np.ndarray, raw: pd.Series, path: str, col: str, expected: str,
                  rows: np.ndarray):
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        row = int(bad[0])
        raise DataError(f"{path}: row {rows[row]}, column {col!r}: expected {expected}, "
                        f"got {raw.iloc[row]!r}")
