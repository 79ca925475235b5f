"""Read the session-sorted Parquet shards written by `tf-gru4rec prepare log --shards`.

A shard directory (the `--out` of `prepare log --shards`) holds `prepare.json` (with
`"format": "tf-gru4rec-shards/1"` and the list of shards), `items.parquet` and
`train/part-NNNNN.parquet`; see `tf_gru4rec.data.shard_writer` for the columns and order.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tf_gru4rec.data.io import ITEM, SESSION, TIME, DataError, normalise_ids
from tf_gru4rec.data.session_log import SessionLog
from tf_gru4rec.data.shard_writer import FORMAT, ITEM_INDEX, SUPPORT
from tf_gru4rec.data.vocabulary import ItemVocabulary

EXPECTED = "a directory written by `tf-gru4rec prepare log --shards` (or its train/ subdirectory)"


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """One training shard: its path (absolute), events and sessions."""

    path: str
    n_events: int
    n_sessions: int


class ShardSet:
    """Session-sorted Parquet shards written by `prepare log --shards`.

    Attributes:
      root: the shard directory (the `--out` of `prepare log --shards`).
      shards: [n_shards] ShardInfo, in order (shard k's sessions start before shard k+1's).
      vocabulary: ItemVocabulary of the raw item ids in index order (`ItemIdx`).
      item_support: int64 [n_items] training events of each item.
    """

    def __init__(self, root: str, shards: list[ShardInfo], vocabulary: ItemVocabulary,
                 item_support: np.ndarray):
        self.root = root
        self.shards = shards
        self.vocabulary = vocabulary
        self.item_support = item_support

    @classmethod
    def load(cls, directory) -> ShardSet:
        """Open the `--out` directory of `prepare log --shards`, or its `train/` subdirectory.

        Raises:
          DataError: `directory` is not such a directory (the message says what is missing).
        """
        directory = os.fspath(directory)
        root = directory
        if not os.path.isfile(os.path.join(root, "prepare.json")):
            parent = os.path.dirname(os.path.abspath(directory))
            if os.path.isfile(os.path.join(parent, "prepare.json")):
                root = parent
            else:
                raise DataError(f"{directory}: no prepare.json here or in its parent; "
                                f"expected {EXPECTED}")
        report_path = os.path.join(root, "prepare.json")
        try:
            with open(report_path) as f:
                report = json.load(f)
        except (OSError, ValueError) as error:
            raise DataError(f"{report_path}: unreadable ({error}); expected {EXPECTED}"
                            ) from None
        fmt = report.get("format") if isinstance(report, dict) else None
        if fmt != FORMAT:
            raise DataError(f"{report_path}: format {fmt!r}, not {FORMAT!r} (a `prepare log` "
                            f"without --shards writes TSV files); expected {EXPECTED}")
        shards = [ShardInfo(os.path.join(root, s["path"]), int(s["events"]), int(s["sessions"]))
                  for s in report["shards"]]
        missing = [s.path for s in shards if not os.path.isfile(s.path)]
        items_path = os.path.join(root, "items.parquet")
        if not os.path.isfile(items_path):
            missing.insert(0, items_path)
        if missing:
            raise DataError(f"{root}: missing {missing[0]}; expected {EXPECTED}")
        items = pq.read_table(items_path, columns=[ITEM_INDEX, ITEM, SUPPORT])
        index = items.column(ITEM_INDEX).to_numpy()
        if not np.array_equal(index, np.arange(len(index))):
            raise DataError(f"{items_path}: column {ITEM_INDEX!r} is not 0..{len(index) - 1} "
                            "in order; expected the file written by `prepare log --shards`")
        vocabulary = ItemVocabulary(_as_read(items.column(ITEM).to_numpy(zero_copy_only=False),
                                             items_path))
        support = items.column(SUPPORT).to_numpy().astype(np.int64)
        return cls(root, shards, vocabulary, support)

    @property
    def n_items(self) -> int:
        return len(self.vocabulary)

    @property
    def n_events(self) -> int:
        return sum(s.n_events for s in self.shards)

    @property
    def n_sessions(self) -> int:
        return sum(s.n_sessions for s in self.shards)

    @property
    def n_predictions(self) -> int:
        """Events that have a next event in their session (training steps)."""
        return self.n_events - self.n_sessions

    def __len__(self) -> int:
        return len(self.shards)

    def read(self, k: int) -> SessionLog:
        """Shard k as a SessionLog, in the file's order (session start, id); reads only that
        file. Sessions are the runs of equal `SessionId` (the writer keeps them whole)."""
        info = self.shards[k]
        table = pq.read_table(info.path, columns=[ITEM_INDEX, SESSION, TIME])
        n = table.num_rows
        sessions = table.column(SESSION)
        if n:
            changes = pc.not_equal(sessions.slice(1), sessions.slice(0, n - 1))
            starts = np.concatenate([[0], np.flatnonzero(
                changes.to_numpy(zero_copy_only=False)) + 1]).astype(np.int64)
        else:
            starts = np.zeros(0, dtype=np.int64)
        offsets = np.append(starts, n).astype(np.int64)
        times = table.column(TIME).to_numpy().astype(np.float64, copy=False)
        items = table.column(ITEM_INDEX).to_numpy().astype(np.int32, copy=False)
        if len(starts) != info.n_sessions or n != info.n_events:
            raise DataError(f"{info.path}: {n} events in {len(starts)} sessions, prepare.json "
                            f"says {info.n_events} in {info.n_sessions}; expected the shard "
                            "written with it")
        if n and (items.min() < 0 or items.max() >= self.n_items):
            raise DataError(f"{info.path}: column {ITEM_INDEX!r} outside 0..{self.n_items - 1}")
        return SessionLog(items=items, offsets=offsets,
                          session_ids=sessions.take(starts).to_numpy(zero_copy_only=False),
                          start_times=times[starts], n_items=self.n_items)

    def __repr__(self) -> str:
        return (f"ShardSet({self.root!r}, shards={len(self.shards)}, events={self.n_events}, "
                f"sessions={self.n_sessions}, items={self.n_items})")


def _as_read(raw_ids: np.ndarray, path: str) -> np.ndarray:
    """The vocabulary's ids typed as `read_events` types the ids of test.parquet (and of any
    other log): text ids that are all integers become int64, so "123" in items.parquet and
    123 read from a test file are one item. Kept as text when that would merge two ids."""
    ids = normalise_ids(raw_ids, path)
    if ids.dtype.kind == "i" and len(np.unique(ids)) < len(ids):
        return raw_ids
    return ids
