"""The graph of an exported GRU4Rec: the signatures TensorFlow Serving runs.

`ServingModule` holds `tf.function`s with explicit input signatures, written out by
`tf_gru4rec.export` with `keras.export.ExportArchive`. Raw item ids are strings in and out; the
vocabulary is inside the graph (two static hash tables initialised from the asset
`assets/items.txt`, one id per line in index order). B is the number of rows of a request, K the
export's `k`, S = sum(layers) the flattened GRU state, H = layers[-1], T a session length.

Signatures (every signature has an input, and all inputs and outputs have the rows as their
first dimension, as TF Serving's `--enable_batching` needs: it refuses a run without inputs,
concatenates requests along dimension 0 and splits every output along it):

  serving_default  stateful single step; the server keeps each session's GRU state.
      in:  session_id string [B], item_id string [B]
      out: item_ids string [B, K], scores float32 [B, K], known bool [B]
  click            serving_default with the click's position in its session (0, 1, 2, ...),
                   so that a retried request does not click twice: a row is applied unless
                   the server already has a later position for that session (a retry of the
                   last click gets the same answer again, from the state it already has).
      in:  session_id string [B], item_id string [B], position int64 [B] (0 to
           MAX_CLICK_POSITION)
      out: item_ids, scores, known as serving_default; applied bool [B]
  end_session      forget sessions.
      in:  session_id string [B]
      out: ended bool [B] (the session had state)
  step             stateless single step; the client keeps the state (start from zeros).
      in:  item_id string [B], state float32 [B, S] (within [-1, 1], as a GRU state)
           (+ seen_item_ids string [B, T], "" padded, when exported with exclude_seen)
      out: item_ids string [B, K], scores float32 [B, K], known bool [B], state float32 [B, S]
  recommend        the whole session so far; no state anywhere.
      in:  session_item_ids string [B, T], "" is padding (left, right or both)
      out: item_ids string [B, K], scores float32 [B, K], known bool [B] (some item known)
  rank             the stateful step of serving_default, returning where a given next item
                   ranks among all items instead of the top K (used by replay for exact
                   offline metrics; ignores exclude_seen, as offline evaluation does).
      in:  session_id string [B], item_id string [B], target_item_id string [B]
      out: n_higher int32 [B] (items scoring strictly higher than the target),
           n_ties int32 [B] (other items scoring exactly the same), -1 for unknown targets;
           known bool [B]
  lookup           which item ids the model knows.
      in:  item_id string [B]
      out: known bool [B]
  session_count    sessions held by the stateful signatures (for monitoring).
      in:  probe int32 [B] (values ignored; send one row)
      out: count int64 [B] (the count, in every row)

Semantics shared by the three scoring paths (so they give identical recommendations):
  - an unknown item does not advance the state; the recommendation comes from the state so far;
  - a session with no known item yet gets the `popular_items` fallback (scores 0.0);
  - `scores` are the model's raw item scores (no final activation);
  - with `exclude_seen`, items already clicked in the session are never recommended (the
    stateful path remembers the last `max_seen` items of each session).

Scoring all items reads the whole item table, which sets the floor of a click's latency. The
table is stored in `score_shards` row blocks (one variable each) scored in parallel, with a
top-K per block merged into the same items and ties as one top-K; `score_precision` chooses a
float32 (exact), bfloat16 or int8 (per-row scale) copy for scoring (BENCHMARKS.md measures
both their speed and their accuracy).

Limits (`ServingLimits`) are checked inside the graph, so TensorFlow Serving enforces them too:
an input whose rank or fixed dimensions differ from its signature's (TF Serving's C++ session
feeds tensors unchecked), a request over a limit, inputs whose row counts differ, an empty
session id, a `state` outside [-1, 1] (or not finite) or a click position out of range is
refused with INVALID_ARGUMENT and a message naming the input and the limit or expected shape,
before any state changes. The default row cap follows the catalogue (`request_work` item rows x
request rows), and requests are scored `chunk_rows` rows at a time, one chunk after another,
so that the score matrices of a request stay within `scoring_memory_bytes` whatever its rows
(`request_memory_bound` states what one request may add to the server's memory).

Session state (serving_default, click, end_session, rank) lives in `MutableHashTable`s keyed by
session id, exported empty. Memory is bounded in sessions and in bytes:
  - a session idle for more than `session_idle_seconds` starts over from a zero state, and a
    sweep (at most every idle/10 seconds, run inside a request) removes such sessions;
  - after a request leaves more than the capacity, the least recently used sessions are
    removed down to 90% of it (so sweeps stay rare), never those of the request unless one
    request brings more new sessions than that. The capacity is `session_capacity`, lowered
    so that capacity x `session_bytes_bound()` fits `limits.session_memory_bytes` (session ids
    are at most `limits.max_id_bytes` long, so every session has a known worst-case size).
Duplicate session ids in one request are processed in row order: the k-th occurrence of an id
goes to round k, and each round sees the state the previous one wrote. Finding the rounds sorts
the rows once (O(B log B)) and each round touches only its own rows, so a request costs time
and memory linear in its rows (up to the sort). Concurrent requests for the same session race:
route a session to one replica and send its clicks one after another.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

WARMUP_SESSION = "__tf_gru4rec_warmup__"
_LOW_WATER = 0.9
# Rough bytes of hash-map bookkeeping per entry and table (key string header, value tensor
# header, bucket); the worst case, not the average.
_ENTRY_OVERHEAD_BYTES = 160

SCORE_PRECISIONS = ("float32", "bfloat16", "int8")
MAX_DEFAULT_ROWS = 10_000  # the derived `max_request_rows` never exceeds this
# Bytes one (request row, item) pair may hold while a chunk is scored: the score blocks, their
# concatenation, and `rank`'s comparisons (bool) and counts (int32); about 15 measured
# (BENCHMARKS.md, serving_work_bound.py), with room to spare.
SCORE_BYTES = 20
REQUEST_ITEM_BYTES = 96  # one item id of a [B, T] input: 24-byte string + lookups + copies
REQUEST_FIXED_BYTES = 64 << 20
MAX_CLICK_POSITION = 10**9  # `click` positions above this are refused (no session gets there)
SIGNATURES = ("serving_default", "click", "end_session", "step", "recommend", "rank", "lookup",
              "session_count")


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


class ServingModule(tf.Module):
    """The exported graph; see the module docstring for the signatures.

    Args:
      model: a built `GRU4Rec` (the variables its inference path reads are what gets saved;
        the optimizer and training state are not).
      vocab_file: text file of raw item ids (one per line, line i = item index i).
      k: number of recommendations per request.
      popular: int64 [k] item indices of the fallback recommendation.
      exclude_seen, max_seen, session_capacity, session_idle_seconds: see `export_model`.
      limits: `ServingLimits` (default: its defaults).
      score_precision: the item table that scores all items: "float32" (exact, the model's
        own), "bfloat16" (a bfloat16 copy; products rounded to bfloat16) or "int8" (int8 rows
        with a float scale per row, the GRU output quantised per row; int32 products).
      score_shards: the item table is scored in this many row blocks, in parallel (fewer when
        a block would hold fewer than max(k, 16) items); results do not depend on it.
    """

    def __init__(self, model, vocab_file: str, k: int, popular: np.ndarray,
                 exclude_seen: bool, max_seen: int, session_capacity: int,
                 session_idle_seconds: float, limits: ServingLimits | None = None,
                 score_precision: str = "float32", score_shards: int = 2):
        super().__init__(name="gru4rec_serving")
        self._holder = _Untracked(model)  # ExportArchive saves the variables the graph reads
        self.layer_sizes = list(model.layer_sizes)
        self.state_size = int(sum(self.layer_sizes))
        self.hidden_size = int(self.layer_sizes[-1])
        self.n_items = int(model.n_items)
        self.k = int(k)
        self.exclude_seen = bool(exclude_seen)
        self.max_seen = int(max_seen)
        self.limits = (limits or ServingLimits()).resolved(self.n_items)
        self.chunk_rows = self.limits.score_chunk_rows(self.n_items)
        self.session_capacity = effective_capacity(
            int(session_capacity), self.limits, self.state_size,
            self.max_seen if self.exclude_seen else 0)
        self.session_idle_seconds = float(session_idle_seconds)
        self.sweep_seconds = self.session_idle_seconds / 10.0
        self.low_water = max(1, int(self.session_capacity * _LOW_WATER))
        self.popular = tf.constant(np.asarray(popular, dtype=np.int64))
        self.id_to_index = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                vocab_file, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER), default_value=-1)
        self.index_to_id = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                vocab_file, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
                tf.string, tf.lookup.TextFileIndex.WHOLE_LINE), default_value="")
        self.states = tf.lookup.experimental.MutableHashTable(
            tf.string, tf.float32, default_value=tf.zeros([self.state_size]), name="states")
        self.last_seen = tf.lookup.experimental.MutableHashTable(
            tf.string, tf.float64, default_value=-1.0, name="last_seen")
        self.clicks = tf.lookup.experimental.MutableHashTable(
            tf.string, tf.int64, default_value=0, name="clicks")
        if self.exclude_seen:
            self.seen = tf.lookup.experimental.MutableHashTable(
                tf.string, tf.int64, default_value=tf.constant([-1] * self.max_seen, tf.int64),
                name="seen")
        self.last_sweep = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="last_sweep")
        self.embedding_mode = model.embedding_mode
        self._build_score_table(model, score_precision, score_shards)
        self._build_signatures()

    def _build_score_table(self, model, precision: str, shards: int) -> None:
        """The item table as row blocks (`shard_bounds`), one variable per block and
        precision: float32 blocks (scoring at float32, and the tied input embedding of the
        constrained mode) and the reduced-precision blocks of `score_precision`. Only the
        blocks a signature reads are saved."""
        if precision not in SCORE_PRECISIONS:
            raise ValueError(f"`score_precision` should be one of {SCORE_PRECISIONS}. "
                             f"Received: {precision!r}")
        self.score_precision = precision
        self.shard_bounds = shard_bounds(self.n_items, self.k, shards)
        weights = np.asarray(model.item_scores.item_weights.numpy())
        bias = np.asarray(model.item_scores.item_bias.numpy())
        self.table_blocks, self.bias_blocks, self.score_blocks, self.scale_blocks = [], [], [], []
        for i, (start, stop) in enumerate(zip(self.shard_bounds[:-1], self.shard_bounds[1:],
                                              strict=True)):
            block = weights[start:stop]
            self.table_blocks.append(tf.Variable(block, trainable=False, name=f"items_{i}"))
            self.bias_blocks.append(tf.Variable(bias[start:stop], trainable=False,
                                                name=f"item_bias_{i}"))
            if precision == "bfloat16":
                self.score_blocks.append(tf.Variable(tf.cast(block, tf.bfloat16),
                                                     trainable=False, name=f"items_bf16_{i}"))
            elif precision == "int8":
                table, scale = quantize_rows(block)
                self.score_blocks.append(tf.Variable(table, trainable=False,
                                                     name=f"items_int8_{i}"))
                self.scale_blocks.append(tf.Variable(scale, trainable=False,
                                                     name=f"items_scale_{i}"))
            else:
                self.score_blocks.append(self.table_blocks[-1])

    def _item_rows(self, item_idx):
        """Rows of the float32 item table for indices [M] (all valid): [M, H]."""
        rows = None
        for start, stop, block in zip(self.shard_bounds[:-1], self.shard_bounds[1:],
                                      self.table_blocks, strict=True):
            inside = (item_idx >= start) & (item_idx < stop)
            # Gather from the read value: a gather on the variable itself (ResourceGather)
            # would switch it to copy-on-read, and every scoring read would copy the block.
            taken = tf.gather(block.value(),
                              tf.clip_by_value(item_idx - start, 0, stop - start - 1))
            rows = taken if rows is None else tf.where(inside[:, None], taken, rows)
        return rows

    def _shard_scores(self, hidden):
        """Scores of every item for GRU outputs hidden [B, H], as one [B, rows] block per
        row block of the item table (`score_shards`): independent products that run in
        parallel (a batch-1 product alone uses one core)."""
        if self.score_precision == "int8":
            hidden_q, hidden_scale = quantize_rows(hidden)
        blocks = []
        for i, table in enumerate(self.score_blocks):
            if self.score_precision == "float32":
                products = tf.matmul(hidden, table, transpose_b=True)
            elif self.score_precision == "bfloat16":
                products = tf.cast(tf.matmul(tf.cast(hidden, tf.bfloat16), table,
                                             transpose_b=True), tf.float32)
            else:
                products = tf.raw_ops.BatchMatMulV3(x=hidden_q[None], y=table[None],
                                                    Tout=tf.int32, adj_y=True)[0]
                products = (tf.cast(products, tf.float32) * hidden_scale[:, None]
                            * self.scale_blocks[i][None, :])
            blocks.append(products + self.bias_blocks[i])  # (B, rows of block i)
        return blocks

    def _score_all(self, hidden):
        """Scores of every item [B, n_items] for GRU outputs hidden [B, H]."""
        blocks = self._shard_scores(hidden)
        return blocks[0] if len(blocks) == 1 else tf.concat(blocks, axis=1)

    @property
    def _model(self):
        return self._holder.value

    # ------------------------------------------------------------------ graph pieces
    def _advance(self, item_idx, state):
        """One GRU step. item_idx int64 [M] (all >= 0), state [M, S] -> (hidden [M, H],
        new state [M, S])."""
        states = tf.split(state, self.layer_sizes, axis=1) if len(self.layer_sizes) > 1 else [
            state]
        if self.embedding_mode == "constrained":  # the tied embedding: the table's blocks
            hidden, new_states = self._model.gru(self._item_rows(item_idx), states,
                                                 training=False)
        else:
            hidden, new_states = self._model.step(tf.cast(item_idx, tf.int32), states,
                                                  training=False)
        new_state = tf.concat(new_states, axis=1) if len(new_states) > 1 else new_states[0]
        return hidden, new_state

    def _lookup(self, item_id):
        """Raw ids (any shape) -> int64 indices, -1 for unknown ids."""
        return self.id_to_index.lookup(item_id)

    def _top_k(self, hidden, fallback, seen=None):
        """hidden [B, H], fallback bool [B], seen int64 [B, T] (-1 = none) ->
        (item_ids string [B, K], scores float32 [B, K]); scored `chunk_rows` rows at a time."""
        if seen is None:
            indices, values = self._by_chunks(lambda h: self._top_k_rows(h), [hidden],
                                              [(tf.int64, [None, self.k]),
                                               (tf.float32, [None, self.k])])
        else:
            indices, values = self._by_chunks(self._top_k_rows, [hidden, seen],
                                              [(tf.int64, [None, self.k]),
                                               (tf.float32, [None, self.k])])
        fallback = fallback[:, None]
        indices = tf.where(fallback, self.popular[None, :], indices)
        values = tf.where(fallback, tf.zeros_like(values), values)
        return self.index_to_id.lookup(indices), values

    def _top_k_rows(self, hidden, seen=None):
        """The top K of one chunk: hidden [C, H], seen int64 [C, T] or None ->
        (indices int64 [C, K], scores float32 [C, K])."""
        if seen is None and len(self.shard_bounds) > 2:
            # Top-K of each shard, then of their candidates: the same items and ties as one
            # top-K (candidates are in item order, top_k prefers the lower index on ties).
            values, indices = [], []
            for start, block in zip(self.shard_bounds[:-1], self._shard_scores(hidden),
                                    strict=True):
                top = tf.math.top_k(block, k=self.k)
                values.append(top.values)
                indices.append(tf.cast(top.indices, tf.int64) + start)
            values, picked = tf.math.top_k(tf.concat(values, axis=1), k=self.k)  # (C, K)
            return tf.gather(tf.concat(indices, axis=1), picked, batch_dims=1), values
        scores = self._score_all(hidden)  # (C, n_items)
        if seen is not None:
            batch_rows = tf.broadcast_to(
                tf.range(tf.shape(seen, out_type=tf.int64)[0])[:, None],
                tf.shape(seen, out_type=tf.int64))
            mask = seen >= 0
            indices = tf.stack([tf.boolean_mask(batch_rows, mask),
                                tf.boolean_mask(seen, mask)], axis=1)
            scores = tf.tensor_scatter_nd_update(
                scores, indices,
                tf.fill([tf.shape(indices)[0]], tf.constant(-np.inf, tf.float32)))
        values, indices = tf.math.top_k(scores, k=self.k)  # (C, K)
        return tf.cast(indices, tf.int64), values

    def _rank_rows(self, hidden, target):
        """Where targets rank in one chunk: hidden [C, H], target int64 [C] (>= 0) ->
        (n_higher int32 [C], n_ties int32 [C])."""
        scores = self._score_all(hidden)  # (C, n_items)
        target_scores = tf.gather(scores, target, axis=1, batch_dims=1)
        n_higher = tf.reduce_sum(tf.cast(scores > target_scores[:, None], tf.int32), axis=1)
        n_ties = tf.reduce_sum(tf.cast(scores == target_scores[:, None], tf.int32), axis=1) - 1
        return n_higher, n_ties

    def _by_chunks(self, fn, tensors, out_specs):
        """fn applied to row chunks of `tensors` (each [B, ...]), `chunk_rows` rows at a time
        and one chunk after another, so that a request's score matrices never exceed
        `limits.scoring_memory_bytes`; the outputs ((dtype, shape) in `out_specs`, each
        [C, ...]) are concatenated back to [B, ...]."""
        if self.chunk_rows >= self.limits.max_request_rows:  # every request is one chunk
            return fn(*tensors)
        rows = tf.shape(tensors[0])[0]
        size = self.chunk_rows
        n_chunks = (rows + size - 1) // size

        def body(i, *arrays):
            start = i * size
            take = tf.minimum(size, rows - start)
            outs = fn(*[t[start:start + take] for t in tensors])
            return (i + 1, *(a.write(i, o) for a, o in zip(arrays, outs, strict=True)))

        arrays = [tf.TensorArray(dtype, size=n_chunks, infer_shape=False, element_shape=shape)
                  for dtype, shape in out_specs]
        _, *arrays = tf.while_loop(lambda i, *_: i < n_chunks, body, (tf.constant(0), *arrays),
                                   parallel_iterations=1)
        return [a.concat() for a in arrays]

    def _checked(self, session_ids=(), sessions=(), **inputs):
        """Validate a request's inputs before anything else runs; returns them in order.

        Every input must have the rank and fixed dimensions of its signature (TensorFlow
        Serving's C++ session feeds tensors unchecked); then `inputs` (name -> tensor, in the
        order the signature lists them) must all have the same number of rows, at most
        `max_request_rows`; `session_ids` names those holding session ids (1 to `max_id_bytes`
        bytes each) and `sessions` those of shape [B, T] (T at most `max_session_length`).
        Float inputs (`state`) must be finite and within [-1, 1], where a GRU state lies.
        """
        limits = self.limits
        names = list(inputs)
        with tf.control_dependencies([_shape_check(name, tensor, name in sessions)
                                      for name, tensor in inputs.items()]):
            rows = {name: tf.shape(tensor, out_type=tf.int64)[0]
                    for name, tensor in inputs.items()}
        first = names[0]
        checks = [_require(rows[first] <= limits.max_request_rows,
                           f"`{first}` has {{}} rows; this export accepts at most "
                           f"{limits.max_request_rows} rows per request (export option "
                           f"max_request_rows)", rows[first])]
        for name in names[1:]:
            checks.append(_require(tf.equal(rows[name], rows[first]),
                                   f"`{name}` has {{}} rows but `{first}` has {{}}: every input "
                                   f"should have one row per session", rows[name], rows[first]))
        with tf.control_dependencies(checks):  # row counts first: they are the cheap checks
            for name in session_ids:
                lengths = tf.concat([tf.strings.length(inputs[name]), [1]], axis=0)
                checks.append(_require(tf.reduce_min(lengths) >= 1,
                                       f"a `{name}` is empty; session ids should be non-empty "
                                       f"strings"))
                checks.append(_require(tf.reduce_max(lengths) <= limits.max_id_bytes,
                                       f"a `{name}` is {{}} bytes long; this export accepts at "
                                       f"most {limits.max_id_bytes} bytes (export option "
                                       f"max_id_bytes)", tf.reduce_max(lengths)))
            for name in sessions:
                length = tf.shape(inputs[name], out_type=tf.int64)[1]
                checks.append(_require(length <= limits.max_session_length,
                                       f"`{name}` has {{}} items per row; this export accepts "
                                       f"at most {limits.max_session_length} (export option "
                                       f"max_session_length)", length))
            for name, tensor in inputs.items():
                if tensor.dtype.is_floating:
                    largest = tf.reduce_max(tf.concat([tf.reshape(tf.abs(tensor), [-1]), [0.0]],
                                                      axis=0))
                    # NaN fails the comparison too (and reduce_max passes it on).
                    checks.append(_require(tf.reduce_all(tf.abs(tensor) <= 1.0),
                                           f"`{name}` should hold finite numbers within [-1, 1] "
                                           f"(a GRU state); its largest magnitude is {{}}",
                                           largest))
        with tf.control_dependencies(checks):
            return [tf.identity(tensor) for tensor in inputs.values()]

    def _stateful_step(self, session_id, item_id, position=None):
        """Advance the sessions of the request by one click each (duplicates in row order).

        session_id, item_id string [B]; position int64 [B] or None (always apply).
        Returns (hidden [B, H], has_state bool [B], known bool [B], seen int64 [B, max_seen]
        or None, applied bool [B]). Writes the new states, click counts and last-seen times,
        then evicts if due.
        """
        now = tf.timestamp()
        item_idx = self._lookup(item_id)
        known = item_idx >= 0
        occurrence = occurrence_index(session_id)  # (B,) round of each row
        order = tf.argsort(occurrence, stable=True)  # rows round by round, in row order
        round_sizes = tf.math.bincount(occurrence)
        round_starts = tf.cumsum(round_sizes, exclusive=True)
        n_rounds = tf.size(round_sizes)
        n_seen = self.max_seen if self.exclude_seen else 1

        def one_round(r, out_hidden, out_has_state, out_seen, out_applied):
            rows = tf.slice(order, [round_starts[r]], [round_sizes[r]])  # (M,)
            sid = tf.gather(session_id, rows)
            idx = tf.gather(item_idx, rows)
            kn = tf.gather(known, rows)
            last = tf.ensure_shape(self.last_seen.lookup(sid), [None])
            live = (last >= 0.0) & (now - last <= self.session_idle_seconds)
            clicks = tf.where(live, tf.ensure_shape(self.clicks.lookup(sid), [None]), 0)
            pos = clicks if position is None else tf.gather(position, rows)
            applied = ~live | (pos >= clicks)  # a retry of an applied click is not re-applied
            stored = tf.ensure_shape(self.states.lookup(sid), [None, self.state_size])
            state = tf.where(live[:, None], stored, 0.0)  # (M, S)
            advance = kn & applied
            new_hidden, new_state = self._advance(tf.where(advance, idx, 0), state)
            state_out = tf.where(advance[:, None], new_state, state)
            hidden = tf.where(advance[:, None], new_hidden, state[:, -self.hidden_size:])
            write = advance | live
            write_sid = tf.boolean_mask(sid, write)
            self.states.insert(write_sid, tf.boolean_mask(state_out, write))
            self.last_seen.insert(write_sid, tf.fill(tf.shape(write_sid), now))
            self.clicks.insert(write_sid, tf.boolean_mask(tf.where(applied, pos + 1, clicks),
                                                          write))
            seen = tf.fill([tf.size(rows), n_seen], tf.constant(-1, tf.int64))
            if self.exclude_seen:
                stored_seen = tf.ensure_shape(self.seen.lookup(sid), [None, self.max_seen])
                old = tf.where(live[:, None], stored_seen, tf.constant(-1, tf.int64))
                seen = tf.where(advance[:, None], tf.concat([idx[:, None], old[:, :-1]], axis=1),
                                old)
                self.seen.insert(write_sid, tf.boolean_mask(seen, write))
            return (r + 1, out_hidden.write(r, hidden), out_has_state.write(r, write),
                    out_seen.write(r, seen), out_applied.write(r, applied))

        def array(dtype, shape):
            return tf.TensorArray(dtype, size=n_rounds, infer_shape=False, element_shape=shape)

        _, hidden, has_state, seen, applied = tf.while_loop(
            lambda r, *_: r < n_rounds, one_round,
            (tf.constant(0), array(tf.float32, [None, self.hidden_size]),
             array(tf.bool, [None]), array(tf.int64, [None, n_seen]), array(tf.bool, [None])))
        back = tf.math.invert_permutation(order)  # row i is at position back[i] of the rounds
        hidden, has_state, seen, applied = (tf.gather(ta.concat(), back)
                                            for ta in (hidden, has_state, seen, applied))
        with tf.control_dependencies([hidden]):
            self._maybe_evict(now)
        return hidden, has_state, known, (seen if self.exclude_seen else None), applied

    def _maybe_evict(self, now):
        due = (self.last_seen.size() > self.session_capacity) | (
            now - self.last_sweep >= self.sweep_seconds)
        return tf.cond(due, lambda: self._sweep(now), lambda: tf.constant(0, tf.int64))

    def _sweep(self, now):
        """Remove idle sessions, then the least recently used above the capacity."""
        keys, times = self.last_seen.export()
        keys, times = tf.ensure_shape(keys, [None]), tf.ensure_shape(times, [None])
        n = tf.size(keys, out_type=tf.int64)
        order = tf.argsort(times, direction="DESCENDING", stable=True)
        position = tf.cast(tf.math.invert_permutation(order), tf.int64)  # 0 = most recent
        keep = tf.where(n > self.session_capacity, tf.constant(self.low_water, tf.int64), n)
        evict = (now - times > self.session_idle_seconds) | (position >= keep)
        gone = tf.boolean_mask(keys, evict)
        self._remove(gone)
        self.last_sweep.assign(now)
        return tf.size(gone, out_type=tf.int64)

    def _remove(self, session_id):
        self.states.remove(session_id)
        self.last_seen.remove(session_id)
        self.clicks.remove(session_id)
        if self.exclude_seen:
            self.seen.remove(session_id)

    # ------------------------------------------------------------------ signatures
    def _build_signatures(self):
        string_batch = tf.TensorSpec([None], tf.string)

        def serving_default(session_id, item_id):
            session_id, item_id = self._checked(("session_id",), session_id=session_id,
                                                item_id=item_id)
            hidden, has_state, known, seen, _ = self._stateful_step(session_id, item_id)
            item_ids, scores = self._top_k(hidden, ~has_state, seen)
            return {"item_ids": item_ids, "scores": scores, "known": known}

        def click(session_id, item_id, position):
            session_id, item_id, position = self._checked(
                ("session_id",), session_id=session_id, item_id=item_id, position=position)
            padded = tf.concat([position, tf.zeros([1], tf.int64)], axis=0)
            worst = tf.where(tf.reduce_any(position < 0), tf.reduce_min(padded),
                             tf.reduce_max(padded))
            checked = _require(
                (worst >= 0) & (worst <= MAX_CLICK_POSITION),
                f"`position` should be the click's 0-based index in its session: non-negative "
                f"and at most {MAX_CLICK_POSITION}; received {{}}", worst)
            with tf.control_dependencies([checked]):
                position = tf.identity(position)
            hidden, has_state, known, seen, applied = self._stateful_step(
                session_id, item_id, position)
            item_ids, scores = self._top_k(hidden, ~has_state, seen)
            return {"item_ids": item_ids, "scores": scores, "known": known, "applied": applied}

        def end_session(session_id):
            (session_id,) = self._checked(("session_id",), session_id=session_id)
            ended = tf.ensure_shape(self.last_seen.lookup(session_id), [None]) >= 0.0
            with tf.control_dependencies([ended]):
                self._remove(session_id)
            return {"ended": ended}

        def rank(session_id, item_id, target_item_id):
            session_id, item_id, target_item_id = self._checked(
                ("session_id",), session_id=session_id, item_id=item_id,
                target_item_id=target_item_id)
            hidden, _, known, _, _ = self._stateful_step(session_id, item_id)
            target = self._lookup(target_item_id)
            target_known = target >= 0
            n_higher, n_ties = self._by_chunks(self._rank_rows, [hidden, tf.maximum(target, 0)],
                                               [(tf.int32, [None]), (tf.int32, [None])])
            minus_one = tf.fill(tf.shape(n_higher), -1)
            return {"n_higher": tf.where(target_known, n_higher, minus_one),
                    "n_ties": tf.where(target_known, n_ties, minus_one), "known": known}

        def step(item_id, state, seen_item_ids=None):
            inputs = {"item_id": item_id, "state": state}
            if seen_item_ids is not None:
                inputs["seen_item_ids"] = seen_item_ids
            checked = self._checked(sessions=("seen_item_ids",) if seen_item_ids is not None
                                    else (), **inputs)
            item_id, state = checked[:2]
            item_idx = self._lookup(item_id)
            known = item_idx >= 0
            has_state = tf.reduce_any(tf.not_equal(state, 0.0), axis=1)
            new_hidden, new_state = self._advance(tf.where(known, item_idx, 0), state)
            state_out = tf.where(known[:, None], new_state, state)
            hidden = tf.where(known[:, None], new_hidden, state[:, -self.hidden_size:])
            seen = None
            if seen_item_ids is not None:
                seen = tf.concat([tf.where(known, item_idx, -1)[:, None],
                                  self._lookup(checked[2])], axis=1)
            item_ids, scores = self._top_k(hidden, ~(known | has_state), seen)
            return {"item_ids": item_ids, "scores": scores, "known": known, "state": state_out}

        def recommend(session_item_ids):
            (session_item_ids,) = self._checked(sessions=("session_item_ids",),
                                                session_item_ids=session_item_ids)
            item_idx = self._lookup(session_item_ids)  # (B, T)
            known = item_idx >= 0
            state = tf.zeros([tf.shape(item_idx)[0], self.state_size])

            def body(t, state):
                kn = known[:, t]
                _, new_state = self._advance(tf.where(kn, item_idx[:, t], 0), state)
                return t + 1, tf.where(kn[:, None], new_state, state)

            _, state = tf.while_loop(lambda t, _: t < tf.shape(item_idx)[1], body,
                                     (tf.constant(0), state))
            any_known = tf.reduce_any(known, axis=1)
            seen = tf.where(known, item_idx, -1) if self.exclude_seen else None
            item_ids, scores = self._top_k(state[:, -self.hidden_size:], ~any_known, seen)
            return {"item_ids": item_ids, "scores": scores, "known": any_known}

        def lookup(item_id):
            (item_id,) = self._checked(item_id=item_id)
            return {"known": self._lookup(item_id) >= 0}

        def session_count(probe):
            (probe,) = self._checked(probe=probe)
            return {"count": tf.fill(tf.shape(probe), self.last_seen.size())}

        state_spec = tf.TensorSpec([None, self.state_size], tf.float32)
        step_specs = [string_batch, state_spec]
        if self.exclude_seen:
            step_specs.append(tf.TensorSpec([None, None], tf.string))
        else:
            step = _without_seen(step)
        self.serving_default = tf.function(serving_default, autograph=False,
                                           input_signature=[string_batch, string_batch])
        self.click = tf.function(click, autograph=False, input_signature=[
            string_batch, string_batch, tf.TensorSpec([None], tf.int64)])
        self.end_session = tf.function(end_session, autograph=False, input_signature=[string_batch])
        self.rank = tf.function(rank, autograph=False, input_signature=[string_batch] * 3)
        self.step = tf.function(step, autograph=False, input_signature=step_specs)
        self.recommend = tf.function(recommend, autograph=False,
                                     input_signature=[tf.TensorSpec([None, None], tf.string)])
        self.lookup = tf.function(lookup, autograph=False, input_signature=[string_batch])
        self.session_count = tf.function(session_count, autograph=False,
                                         input_signature=[tf.TensorSpec([None], tf.int32)])


def shard_bounds(n_items: int, k: int, shards: int) -> list[int]:
    """Row boundaries [0, ..., n_items] of at most `shards` blocks of at least max(k, 16) rows,
    each starting at a multiple of 16 rows (a 64-byte boundary for any row width)."""
    if isinstance(shards, bool) or int(shards) != shards or shards < 1:
        raise ValueError(f"`score_shards` should be a positive integer. Received: {shards!r}")
    shards = max(1, min(int(shards), n_items // max(k, 16)))
    step = -(-n_items // shards)
    step = -(-step // 16) * 16
    bounds = list(range(0, n_items, step)) + [n_items]
    while len(bounds) > 2 and bounds[-1] - bounds[-2] < k:  # every block holds k items
        del bounds[-2]
    return bounds


def quantize_rows(matrix):
    """Symmetric int8 quantisation per row: matrix [R, C] (NumPy or tensor) -> (int8 [R, C],
    float32 scale [R]) with matrix ~= int8 * scale[:, None]; an all-zero row gets scale 1."""
    if isinstance(matrix, np.ndarray):
        scale = np.abs(matrix).max(axis=1) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        return np.clip(np.round(matrix / scale[:, None]), -127, 127).astype(np.int8), scale
    scale = tf.reduce_max(tf.abs(matrix), axis=1) / 127.0
    scale = tf.where(scale > 0, scale, 1.0)
    quantized = tf.clip_by_value(tf.round(matrix / scale[:, None]), -127.0, 127.0)
    return tf.cast(quantized, tf.int8), scale


def occurrence_index(keys):
    """For each row, how many earlier rows have the same key: keys [B] -> int32 [B].

    One `tf.unique` (hashing) and one stable sort: O(B log B) time and O(B) memory.
    """
    _, codes = tf.unique(keys)  # first-appearance codes 0..U-1
    order = tf.argsort(codes, stable=True)  # rows grouped by key, row order within a group
    sorted_codes = tf.gather(codes, order)
    group_start = tf.cumsum(tf.math.bincount(codes), exclusive=True)  # (U,)
    rank_in_group = tf.range(tf.size(codes)) - tf.gather(group_start, sorted_codes)
    return tf.scatter_nd(order[:, None], rank_in_group, tf.shape(codes))


def session_bytes_bound(limits: ServingLimits, state_size: int, max_seen: int) -> int:
    """Worst-case bytes one session holds in the stateful tables (ids at their longest)."""
    tables = 4 if max_seen else 3  # states, last_seen, clicks (+ seen)
    return int(tables * (limits.max_id_bytes + _ENTRY_OVERHEAD_BYTES)
               + 4 * state_size + 8 + 8 + 8 * max_seen)


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


def effective_capacity(session_capacity: int, limits: ServingLimits, state_size: int,
                       max_seen: int) -> int:
    """The session capacity, lowered so that its worst case fits the memory budget."""
    by_memory = limits.session_memory_bytes // session_bytes_bound(limits, state_size, max_seen)
    if by_memory < 1:
        raise ValueError(f"`session_memory_bytes` ({limits.session_memory_bytes}) is smaller "
                         f"than one session's worst case "
                         f"({session_bytes_bound(limits, state_size, max_seen)} bytes)")
    return int(min(session_capacity, by_memory))


def _shape_check(name: str, tensor, sessions: bool):
    """An assertion that `tensor` has the rank and fixed dimensions of its signature (its
    static shape), with a message naming it, its expected shape ([B], [B, T], [B, 22]) and
    the shape received."""
    expected = tensor.shape.as_list()
    labels = ", ".join("B" if i == 0 else ("T" if sessions else "?") if d is None else str(d)
                       for i, d in enumerate(expected))
    shape = tf.shape(tensor, out_type=tf.int64)
    # The rank is read from the shape's values padded with -1, not from its size: the static
    # shape makes Grappler fold tf.size(tf.shape(x)) or tf.rank(x) into a constant, so such a
    # check would pass whatever is fed.
    rank = len(expected)
    padded = tf.concat([shape, tf.fill([rank + 1], tf.constant(-1, tf.int64))], axis=0)
    wanted = tf.constant([-2 if d is None else d for d in expected] + [-1], tf.int64)
    got = padded[:rank + 1]
    ok = tf.reduce_all(tf.where(wanted == -2, got >= 0, tf.equal(got, wanted)))
    return _require(ok, f"`{name}` should have shape [{labels}]; received shape {{}}", shape)


def _require(condition, template: str, *values):
    """An assertion that fails with InvalidArgument and `template` formatted with `values`
    (each `{}` in the template takes one value)."""
    message = tf.strings.format(template, values) if values else template
    return tf.debugging.Assert(condition, [message], name="check")


class _Untracked:
    """Holds an object without making it a SavedModel dependency (the Keras model would bring
    its optimizer and training state)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def _without_seen(step):
    def step_without_seen(item_id, state):
        return step(item_id, state)

    return step_without_seen
