"""Row filters of a raw click log: keep (or drop) the rows whose column holds listed values.

A log often mixes item events with others (filters, sorts, searches): `--keep
action_type="clickout item,interaction item image"` keeps the item events only. Values are
compared with the column's text as read (a Parquet column is read as text too).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd


@dataclasses.dataclass(frozen=True)
class RowFilter:
    """Keep (`keep=True`) or drop the rows whose `column` is one of `values`."""

    column: str
    values: tuple[str, ...]
    keep: bool = True

    @classmethod
    def parse(cls, text: str, keep: bool = True) -> RowFilter:
        """`COLUMN=VALUE[,VALUE...]` as a filter; a ValueError says what was expected."""
        column, sep, values = text.partition("=")
        parts = tuple(v.strip() for v in values.split(",")) if sep else ()
        if not column.strip() or not parts or not all(parts):
            raise ValueError("expected COLUMN=VALUE[,VALUE...], e.g. "
                             "'action_type=clickout item,search for item'")
        return cls(column.strip(), parts, keep)

    def mask(self, frame: pd.DataFrame) -> np.ndarray:
        """bool [rows]: the rows of `frame` this filter keeps."""
        hit = frame[self.column].isin(self.values).to_numpy()
        return hit if self.keep else ~hit

    def describe(self) -> str:
        return f"{self.column} {'in' if self.keep else 'not in'} {list(self.values)}"

    def to_dict(self) -> dict:
        return {"column": self.column, "keep" if self.keep else "drop": list(self.values)}
