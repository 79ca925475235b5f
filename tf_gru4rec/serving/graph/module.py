"""`ServingModule`: the exported graph, put together from its parts.

`tf_gru4rec.serving.export` writes it with `keras.export.ExportArchive`. Raw item ids are strings in
and out; the vocabulary is inside the graph (`VocabularyTables`, from the asset
`assets/items.txt`); the stateful signatures keep their sessions in a `SessionStore`; an
`ItemScorer` scores all items; `Signatures` defines the eight signatures on top of them (see
`tf_gru4rec.serving.graph.signatures` for their inputs and outputs).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tf_gru4rec.serving.graph.gru_step import GRUStep
from tf_gru4rec.serving.graph.limits import ServingLimits
from tf_gru4rec.serving.graph.scoring import ItemScorer
from tf_gru4rec.serving.graph.session_store import SessionStore, effective_capacity
from tf_gru4rec.serving.graph.signatures import Signatures
from tf_gru4rec.serving.graph.vocabulary import VocabularyTables


class ServingModule(tf.Module):
    """The exported graph: one attribute per signature (`SIGNATURES`), each a `tf.function`.

    Args:
      model: a built `GRU4Rec` (the variables its inference path reads are what gets saved;
        the optimizer and training state are not).
      vocab_file: text file of raw item ids (one per line, line i = item index i).
      k: number of recommendations per request.
      popular: int64 [k] item indices of the fallback recommendation.
      exclude_seen, max_seen, session_capacity, session_idle_seconds: see `export_model`.
      limits: `ServingLimits` (default: its defaults).
      score_precision: the item table that scores all items: "float32" (exact, the model's
        own), "bfloat16" or "int8" (per-row scale); see `ItemScorer`.
      score_shards: the item table is scored in this many row blocks, in parallel (fewer when
        a block would hold fewer than max(k, 16) items); results do not depend on it.
    """

    def __init__(self, model, vocab_file: str, k: int, popular: np.ndarray,
                 exclude_seen: bool, max_seen: int, session_capacity: int,
                 session_idle_seconds: float, limits: ServingLimits | None = None,
                 score_precision: str = "float32", score_shards: int = 2):
        super().__init__(name="gru4rec_serving")
        self.layer_sizes = list(model.layer_sizes)
        self.state_size = int(sum(self.layer_sizes))
        self.n_items = int(model.n_items)
        self.k = int(k)
        self.exclude_seen = bool(exclude_seen)
        self.max_seen = int(max_seen)
        self.limits = (limits or ServingLimits()).resolved(self.n_items)
        self.chunk_rows = self.limits.score_chunk_rows(self.n_items)
        seen_per_session = self.max_seen if self.exclude_seen else 0
        self.session_capacity = effective_capacity(
            int(session_capacity), self.limits, self.state_size, seen_per_session)
        self.session_idle_seconds = float(session_idle_seconds)
        self.vocabulary = VocabularyTables(vocab_file)
        self.sessions = SessionStore(self.state_size, seen_per_session, self.session_capacity,
                                     self.session_idle_seconds)
        self.scorer = ItemScorer(
            np.asarray(model.item_scores.item_weights.numpy()),
            np.asarray(model.item_scores.item_bias.numpy()), self.k, score_precision,
            score_shards, self.chunk_rows, self.limits.max_request_rows)
        self.score_precision = self.scorer.precision
        self.shard_bounds = self.scorer.bounds
        signatures = Signatures(self.vocabulary, self.sessions, self.scorer,
                                GRUStep(model, self.scorer.item_rows), self.limits, popular,
                                self.exclude_seen)
        for name, function in signatures.functions().items():
            setattr(self, name, function)
