"""Write the outputs of `prepare log --shards` from DuckDB tables (see `prepare_shards`).

- `train/part-NNNNN.parquet`: `SessionId`, `ItemId`, `ItemIdx` (int32), `Time` (float64),
  sorted by (session start, SessionId, Time, input row); a shard is cut at the first session
  boundary at or after `shard_events` events, so no session spans two shards;
- `items.parquet`: `ItemIdx` 0..n-1, `ItemId`, `support` (int64 training events), the index
  being the order of first appearance in the sorted shards;
- `test.parquet` (`valid.parquet`): `SessionId`, `ItemId`, `Time` sorted by session, time.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tf_gru4rec.data.io import ITEM, SESSION, TIME

logger = logging.getLogger(__name__)

ITEM_INDEX, SUPPORT = "ItemIdx", "support"
FORMAT = "tf-gru4rec-shards/1"
BATCH_ROWS = 100_000


class _Indexer:
    """Raw item ids -> dense indices in order of first appearance; counts the events."""

    def __init__(self):
        self.index: pd.Index | None = None
        self.support = np.zeros(0, dtype=np.int64)

    def __call__(self, items: np.ndarray) -> np.ndarray:
        if self.index is None:
            self.index = pd.Index(pd.unique(items))
        idx = self.index.get_indexer(items)
        missing = idx < 0
        if missing.any():
            new = pd.Index(pd.unique(items[missing]))
            idx[missing] = len(self.index) + new.get_indexer(items[missing])
            self.index = self.index.append(new)
        counts = np.bincount(idx, minlength=len(self.index))
        counts[: len(self.support)] += self.support
        self.support = counts
        return idx.astype(np.int32)


def write_train_shards(con, table: str, directory: str, shard_events: int
                       ) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Write `table` as shards in `directory` (made if absent).

    Returns (shards, raw_ids, support): [{"path", "events", "sessions"}] with paths relative
    to the parent of `directory`, the raw item ids [n_items] in index order, and int64
    support [n_items].
    """
    os.makedirs(directory, exist_ok=True)
    query = (f"SELECT t.{SESSION}, t.{ITEM}, t.{TIME} FROM {table} t JOIN "
             f"(SELECT {SESSION}, min({TIME}) AS start FROM {table} GROUP BY {SESSION}) s "
             f"ON t.{SESSION} = s.{SESSION} ORDER BY s.start, t.{SESSION}, t.{TIME}, t.row")
    relation = con.sql(query)
    # duckdb 2 names it to_arrow_reader, 1.x fetch_arrow_reader; both stream the sorted rows
    reader = getattr(relation, "to_arrow_reader", None) or relation.fetch_arrow_reader
    reader = reader(BATCH_ROWS)
    indexer, shards, pending = _Indexer(), [], []
    name = os.path.basename(os.path.normpath(directory))

    def flush(part: pa.Table) -> None:
        path = f"part-{len(shards):05d}.parquet"
        pq.write_table(part, os.path.join(directory, path))
        shards.append({"path": f"{name}/{path}", "events": part.num_rows,
                       "sessions": _n_sessions(part.column(SESSION))})
        logger.info("wrote %s/%s: %d events, %d sessions", name, path, part.num_rows,
                    shards[-1]["sessions"])

    for batch in reader:
        items = batch.column(1).to_numpy(zero_copy_only=False)
        pending.append(pa.table({SESSION: batch.column(0), ITEM: batch.column(1),
                                 ITEM_INDEX: pa.array(indexer(items), pa.int32()),
                                 TIME: batch.column(2).cast(pa.float64())}))
        while sum(p.num_rows for p in pending) > shard_events:
            part = pa.concat_tables(pending)
            cut = _boundary_after(part.column(SESSION), shard_events)
            if cut is None:  # a session longer than the rest: wait for more events
                break
            flush(part.slice(0, cut).combine_chunks())
            pending = [part.slice(cut)]
    rest = pa.concat_tables(pending) if pending else None
    if rest is not None and rest.num_rows:
        flush(rest.combine_chunks())
    raw_ids = indexer.index.to_numpy() if indexer.index is not None else np.zeros(0)
    return shards, raw_ids, indexer.support


def write_items(path: str, raw_ids: np.ndarray, support: np.ndarray) -> None:
    """items.parquet: `ItemIdx` int32 [n], `ItemId` [n], `support` int64 [n]."""
    pq.write_table(pa.table({ITEM_INDEX: pa.array(np.arange(len(raw_ids)), pa.int32()),
                             ITEM: pa.array(raw_ids), SUPPORT: pa.array(support, pa.int64())}),
                   path)


def write_events_table(con, table: str, path: str) -> None:
    """`table` as a Parquet event file (`SessionId`, `ItemId`, `Time`) by session, time."""
    target = path.replace("'", "''")
    con.execute(f"COPY (SELECT {SESSION}, {ITEM}, {TIME} FROM {table} "
                f"ORDER BY {SESSION}, {TIME}, row) TO '{target}' (FORMAT parquet)")


def _n_sessions(sessions: pa.ChunkedArray) -> int:
    n = len(sessions)
    if n == 0:
        return 0
    return 1 + int(pc.sum(pc.not_equal(sessions.slice(1), sessions.slice(0, n - 1))).as_py()
                   or 0)


def _boundary_after(sessions: pa.ChunkedArray, target: int) -> int | None:
    """The first index >= `target` where a new session starts (None: none in `sessions`)."""
    n = len(sessions)
    if target >= n:
        return None
    changes = pc.not_equal(sessions.slice(target), sessions.slice(target - 1, n - target))
    found = np.flatnonzero(changes.to_numpy(zero_copy_only=False))
    return target + int(found[0]) if len(found) else None
