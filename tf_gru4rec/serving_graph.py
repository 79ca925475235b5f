"""Former home of the served graph; kept so that the old import paths keep working.

Deprecated: import from `tf_gru4rec.serving.graph` instead, where `ServingModule` is split into
its parts (`module`, `signatures`, `vocabulary`, `session_store`, `scoring`, `gru_step`,
`checks`, `limits`). The names below are those this module used to define.

Not an entry of `tf_gru4rec.MOVED_MODULES`: `tf_gru4rec.serving.graph` itself imports nothing
(each part loads only what it needs), so these names are not attributes of that package.
"""

import warnings

from tf_gru4rec.serving.graph.limits import (
    MAX_CLICK_POSITION,
    MAX_DEFAULT_ROWS,
    REQUEST_FIXED_BYTES,
    REQUEST_ITEM_BYTES,
    SCORE_BYTES,
    ServingLimits,
    request_memory_bound,
)
from tf_gru4rec.serving.graph.module import ServingModule
from tf_gru4rec.serving.graph.scoring import SCORE_PRECISIONS, quantize_rows, shard_bounds
from tf_gru4rec.serving.graph.session_store import (
    effective_capacity,
    occurrence_index,
    session_bytes_bound,
)
from tf_gru4rec.serving.graph.signatures import SIGNATURES, WARMUP_SESSION

warnings.warn("tf_gru4rec.serving_graph is deprecated: import from tf_gru4rec.serving.graph "
              "(e.g. tf_gru4rec.serving.graph.module.ServingModule) instead",
              DeprecationWarning, stacklevel=2)

__all__ = [
    "MAX_CLICK_POSITION", "MAX_DEFAULT_ROWS", "REQUEST_FIXED_BYTES", "REQUEST_ITEM_BYTES",
    "SCORE_BYTES", "SCORE_PRECISIONS", "SIGNATURES", "WARMUP_SESSION", "ServingLimits",
    "ServingModule", "effective_capacity", "occurrence_index", "quantize_rows",
    "request_memory_bound", "session_bytes_bound", "shard_bounds",
]
