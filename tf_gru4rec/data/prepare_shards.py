"""`prepare log --shards`: the protocol of `prepare_log` for click logs larger than memory.

The raw log is read by chunks (`raw_log.iter_raw_log`: the same checks and messages), each
chunk is staged as a Parquet file in a work directory beside the output, DuckDB (memory
limit, spilling to the work directory) loads the chunks into one table and runs
`scale_protocol.run_protocol`, and `shard_writer` writes the outputs. Only one chunk, one
batch of the sorted result and the item vocabulary are held in Python memory.

Ids: a column (session or item) is int64 when the ids of every chunk are integers, else
strings: the text of every row as read (what the in-memory path decides on the whole file).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tf_gru4rec.data.io import ITEM, SESSION, TIME
from tf_gru4rec.data.raw_log import iter_raw_log

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_ROWS = 250_000
STAGE_SCHEMA = pa.schema([("row", pa.int64()), ("s_text", pa.string()), ("s_int", pa.int64()),
                          ("i_text", pa.string()), ("i_int", pa.int64()), (TIME, pa.float64())])


class ShardWork:
    """A work directory beside `out` and a DuckDB database in it; both removed on exit
    (also on error).

    Args:
      out: the output directory the work is for (the work directory is made beside it).
      memory_mb: DuckDB's memory limit in MiB; beyond it DuckDB spills to the work directory.
      threads: DuckDB threads (default: at most 4).
    """

    def __init__(self, out: str, memory_mb: int = 1024, threads: int | None = None):
        import duckdb

        parent = os.path.dirname(os.path.abspath(out))
        os.makedirs(parent, exist_ok=True)
        self.directory = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.work.", dir=parent)
        try:
            self.stage = os.path.join(self.directory, "stage")
            spill = os.path.join(self.directory, "spill")
            os.makedirs(self.stage)
            os.makedirs(spill)
            self.con = duckdb.connect(os.path.join(self.directory, "prepare.duckdb"))
            threads = threads or min(4, os.cpu_count() or 1)
            self.con.execute(f"SET memory_limit = '{int(memory_mb)}MB'")
            self.con.execute(f"SET temp_directory = '{_quote(spill)}'")
            self.con.execute(f"SET threads = {int(threads)}")
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise

    def __enter__(self) -> ShardWork:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        con = getattr(self, "con", None)
        if con is not None:
            con.close()
            self.con = None
        shutil.rmtree(self.directory, ignore_errors=True)

    def load(self, path: str, chunk_rows: int | None = None, table: str = "events",
             **read_options) -> int:
        """Stage the click log at `path` by chunks and load it as `table`; returns its events.

        `read_options` are those of `raw_log.read_raw_log` (columns, separator, time units).
        """
        chunk_rows = chunk_rows or DEFAULT_CHUNK_ROWS
        all_int = {SESSION: True, ITEM: True}
        n_rows = 0
        for k, (raw, events) in enumerate(iter_raw_log(path, chunk_rows=chunk_rows,
                                                       **read_options)):
            columns = {"row": pa.array(np.arange(n_rows, n_rows + len(events)))}
            for col, prefix, raw_col in ((SESSION, "s", read_options.get("session_col",
                                                                         SESSION)),
                                         (ITEM, "i", read_options.get("item_col", ITEM))):
                ids = events[col].to_numpy()
                is_int = ids.dtype.kind == "i"
                all_int[col] &= is_int
                columns[f"{prefix}_text"] = pa.array(raw[raw_col], pa.string())
                columns[f"{prefix}_int"] = (pa.array(ids, pa.int64()) if is_int
                                            else pa.nulls(len(ids), pa.int64()))
            columns[TIME] = pa.array(events[TIME].to_numpy(dtype=np.float64))
            pq.write_table(pa.table(columns, schema=STAGE_SCHEMA),
                           os.path.join(self.stage, f"chunk-{k:06d}.parquet"))
            n_rows += len(events)
            logger.debug("staged chunk %d: %d rows (%d in all)", k, len(events), n_rows)
        sid = "s_int" if all_int[SESSION] else "s_text"
        iid = "i_int" if all_int[ITEM] else "i_text"
        glob = _quote(os.path.join(self.stage, "*.parquet"))
        self.con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT row, {sid} AS {SESSION}, "
                         f"{iid} AS {ITEM}, {TIME} FROM read_parquet('{glob}')")
        shutil.rmtree(self.stage, ignore_errors=True)  # the table holds it now
        logger.info("%s: %d events staged (session ids %s, item ids %s)", path, n_rows,
                    "int" if all_int[SESSION] else "str", "int" if all_int[ITEM] else "str")
        return n_rows


def _quote(text: str) -> str:
    """`text` inside a single-quoted SQL literal."""
    return text.replace("'", "''")
