"""Item vocabulary: raw item ids of any type <-> dense indices 0..n_items-1."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

import numpy as np
import pandas as pd

UNKNOWN = -1


class ItemVocabulary:
    """Maps raw item ids (ints or strings) to dense indices and back.

    Indices are assigned in the order ids are given; `extend` appends new ids at the end, so a
    warm-started model keeps the rows of the items it already knows.
    """

    def __init__(self, raw_ids: Iterable):
        ids = np.asarray(list(raw_ids) if not isinstance(raw_ids, np.ndarray) else raw_ids)
        if ids.ndim != 1:
            raise ValueError(f"`raw_ids` should be one-dimensional. Received shape {ids.shape}")
        self._index = pd.Index(ids)
        if not self._index.is_unique:
            dup = self._index[self._index.duplicated()][0]
            raise ValueError(f"`raw_ids` should be unique. Received duplicate id {dup!r}")

    @classmethod
    def from_events(cls, items: Iterable) -> ItemVocabulary:
        """Vocabulary of the distinct ids in `items`, in order of first appearance."""
        return cls(pd.unique(pd.Series(np.asarray(items))))

    def __len__(self) -> int:
        return len(self._index)

    @property
    def raw_ids(self) -> np.ndarray:
        """Raw ids in index order: `raw_ids[i]` is the id of item index i."""
        return self._index.to_numpy()

    def lookup(self, raw: Iterable, strict: bool = False) -> np.ndarray:
        """Raw ids -> int32 indices; unknown ids give -1, or raise if `strict`."""
        raw = np.asarray(raw)
        idx = self._index.get_indexer(raw).astype(np.int32)
        if strict and (idx == UNKNOWN).any():
            bad = raw[idx == UNKNOWN][0]
            raise KeyError(f"Item id {bad!r} is not in the vocabulary ({len(self)} items)")
        return idx

    def to_raw(self, indices: Iterable) -> np.ndarray:
        """Dense indices -> raw ids."""
        return self.raw_ids[np.asarray(indices)]

    def as_strings(self) -> list[str]:
        """Raw ids as strings, the form used inside exported SavedModels."""
        return [str(x) for x in self.raw_ids]

    def extend(self, raw_ids: Iterable) -> ItemVocabulary:
        """A new vocabulary with the unseen ids of `raw_ids` appended (order kept)."""
        new = pd.unique(pd.Series(np.asarray(raw_ids)))
        new = new[self._index.get_indexer(new) == UNKNOWN]
        return ItemVocabulary(np.concatenate([self.raw_ids, new]))

    def save(self, path: str | os.PathLike) -> None:
        kind = "int" if self.raw_ids.dtype.kind in "iu" else "str"
        ids = [int(x) for x in self.raw_ids] if kind == "int" else self.as_strings()
        with open(path, "w") as f:
            json.dump({"kind": kind, "ids": ids}, f)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ItemVocabulary:
        with open(path) as f:
            blob = json.load(f)
        dtype = np.int64 if blob["kind"] == "int" else object
        return cls(np.asarray(blob["ids"], dtype=dtype))

    def __eq__(self, other) -> bool:
        return isinstance(other, ItemVocabulary) and self._index.equals(other._index)

    def __repr__(self) -> str:
        return f"ItemVocabulary(n_items={len(self)})"
