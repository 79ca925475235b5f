"""Per-request and memory limits of an export (`ServingLimits`) and the memory they bound.

The limits are checked inside the served graph (`tf_gru4rec.serving.graph.checks`), so
TensorFlow Serving enforces them too. The default row cap follows the catalogue
(`request_work` item rows x request rows), and requests are scored `score_chunk_rows` rows at
a time, one chunk after another, so that the score matrices of a request stay within
`scoring_memory_bytes` whatever its rows (`request_memory_bound` states what one request may
add to the server's memory).
"""

from __future__ import annotations

import dataclasses

import numpy as np

MAX_DEFAULT_ROWS = 10_000  # the derived `max_request_rows` never exceeds this
# Bytes one (request row, item) pair may hold while a chunk is scored: the score blocks, their
# concatenation, and `rank`'s comparisons (bool) and counts (int32); about 15 measured
# (BENCHMARKS.md, serving_work_bound.py), with room to spare.
SCORE_BYTES = 20
REQUEST_ITEM_BYTES = 96  # one item id of a [B, T] input: 24-byte string + lookups + copies
REQUEST_FIXED_BYTES = 64 << 20
MAX_CLICK_POSITION = 10**9  # `click` positions above this are refused (no session gets there)


@dataclasses.dataclass(frozen=True)
class ServingLimits:
    """Per-request and memory limits of an export, enforced inside the served graph.

    Attributes:
      max_request_rows: most rows (B) in one request of any signature; None (default): derived
        from the catalogue by `resolved` (`request_work` // items, between 1 and 10,000).
      max_id_bytes: longest session id, in bytes (item ids are not limited: an unknown id is
        just unknown).
      max_session_length: most items (T) in `recommend`'s sessions and `step`'s seen items.
      session_memory_bytes: budget for the stateful signatures' session tables.
      request_work: item rows x request rows one request may score, which sets the default
        `max_request_rows` (50M: 1,000 rows at 50k items, 50 at 1M items).
      scoring_memory_bytes: most bytes of score matrices one request holds at a time: requests
        are scored in chunks of `score_chunk_rows(n_items)` rows, one chunk after another.
    """

    max_request_rows: int | None = None
    max_id_bytes: int = 256
    max_session_length: int = 1_000
    session_memory_bytes: int = 1 << 30
    request_work: int = 50_000_000
    scoring_memory_bytes: int = 128 << 20

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None and field.name == "max_request_rows":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"`{field.name}` should be a positive integer. "
                                 f"Received: {value!r}")

    def resolved(self, n_items: int) -> ServingLimits:
        """These limits with `max_request_rows` set for a catalogue of `n_items` items."""
        if self.max_request_rows is not None:
            return self
        rows = min(MAX_DEFAULT_ROWS, max(1, self.request_work // int(n_items)))
        return dataclasses.replace(self, max_request_rows=rows)

    def score_chunk_rows(self, n_items: int) -> int:
        """Rows scored at once: their score matrices (about `SCORE_BYTES` per row and item)
        fit `scoring_memory_bytes`; at least 1."""
        return max(1, self.scoring_memory_bytes // (int(n_items) * SCORE_BYTES))


def request_memory_bound(limits: ServingLimits, n_items: int, state_size: int, k: int) -> int:
    """Bytes one request of any signature may add to the server's peak memory, its own input
    tensors included, with `limits` resolved for `n_items` items (item ids of at most 32 bytes
    assumed; sessions are held apart, in `session_memory_bytes`).

    The score matrices of one chunk (`scoring_memory_bytes`), plus per request row: its
    [T] item ids as fed, looked up and masked (`REQUEST_ITEM_BYTES` each), its session id,
    its state in and out with the GRU's gates, its top-K ids and scores; plus
    `REQUEST_FIXED_BYTES` for the runtime's own allocations.
    """
    limits = limits.resolved(n_items)
    per_row = (limits.max_session_length * REQUEST_ITEM_BYTES + 4 * limits.max_id_bytes
               + 64 * state_size + 96 * k + 1024)
    return int(limits.scoring_memory_bytes + limits.max_request_rows * per_row
               + REQUEST_FIXED_BYTES)
