"""The graph of an exported GRU4Rec: the signatures TensorFlow Serving runs.

`ServingModule` is a `tf.Module` whose methods are `tf.function`s with explicit input
signatures. Raw item ids are strings in and out; the vocabulary is inside the graph (two static
hash tables initialised from the asset `assets/items.txt`, one id per line in index order).
B is the batch size, K the export's `k`, S = sum(layers) the flattened GRU state, H = layers[-1].

Signatures (all inputs and outputs have the batch as their first dimension):

  serving_default  stateful single step; the server keeps each session's GRU state.
      in:  session_id string [B], item_id string [B]
      out: item_ids string [B, K], scores float32 [B, K], known bool [B]
  end_session      forget sessions.
      in:  session_id string [B]
      out: ended bool [B] (the session had state)
  step             stateless single step; the client keeps the state (start from zeros).
      in:  item_id string [B], state float32 [B, S]
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

Semantics shared by the three scoring paths (so they give identical recommendations):
  - an unknown item does not advance the state; the recommendation comes from the state so far;
  - a session with no known item yet gets the `popular_items` fallback (scores 0.0);
  - `scores` are the model's raw item scores (no final activation);
  - with `exclude_seen`, items already clicked in the session are never recommended (the
    stateful path remembers the last `max_seen` items of each session).

Session state (serving_default, end_session, rank) lives in `MutableHashTable`s keyed by
session id, exported empty. Memory is bounded:
  - a session idle for more than `session_idle_seconds` starts over from a zero state, and a
    sweep (at most every idle/10 seconds, run inside a request) removes such sessions;
  - after a request leaves more than `session_capacity` sessions, the least recently used are
    removed down to 90% of the capacity (so sweeps stay rare), never those of the request
    unless one request brings more new sessions than that.
Duplicate session ids in one batch are processed in batch order: the batch is split into rounds
(the k-th occurrence of an id goes to round k) and each round sees the state the previous one
wrote. Concurrent requests for the same session race (route a session to one replica and send
its clicks one after another). TF Serving's batching may pad a batch with copies of its first
row: never set `allowed_batch_sizes` for this model (serving/batching_parameters.txt does not).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

WARMUP_SESSION = "__tf_gru4rec_warmup__"
_LOW_WATER = 0.9


class ServingModule(tf.Module):
    """The exported graph; see the module docstring for the signatures.

    Args:
      model: a built `GRU4Rec` (only its `gru`, `item_scores` and `input_embedding` layers are
        saved; the optimizer and training state are not).
      vocab_file: text file of raw item ids (one per line, line i = item index i).
      k: number of recommendations per request.
      popular: int64 [k] item indices of the fallback recommendation.
      exclude_seen, max_seen, session_capacity, session_idle_seconds: see `export_model`.
    """

    def __init__(self, model, vocab_file: str, k: int, popular: np.ndarray,
                 exclude_seen: bool, max_seen: int, session_capacity: int,
                 session_idle_seconds: float):
        super().__init__(name="gru4rec_serving")
        self._holder = _Untracked(model)  # the layers below are what gets saved
        self.gru = model.gru
        self.item_scores = model.item_scores
        if model.input_embedding is not None:
            self.input_embedding = model.input_embedding
        self.layer_sizes = list(model.layer_sizes)
        self.state_size = int(sum(self.layer_sizes))
        self.hidden_size = int(self.layer_sizes[-1])
        self.n_items = int(model.n_items)
        self.k = int(k)
        self.exclude_seen = bool(exclude_seen)
        self.max_seen = int(max_seen)
        self.session_capacity = int(session_capacity)
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
        if self.exclude_seen:
            self.seen = tf.lookup.experimental.MutableHashTable(
                tf.string, tf.int64, default_value=tf.constant([-1] * self.max_seen, tf.int64),
                name="seen")
        self.last_sweep = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="last_sweep")
        self._build_signatures()

    @property
    def _model(self):
        return self._holder.value

    # ------------------------------------------------------------------ graph pieces
    def _advance(self, item_idx, state):
        """One GRU step. item_idx int64 [M] (all >= 0), state [M, S] -> (hidden [M, H],
        new state [M, S])."""
        states = tf.split(state, self.layer_sizes, axis=1) if len(self.layer_sizes) > 1 else [
            state]
        hidden, new_states = self._model.step(tf.cast(item_idx, tf.int32), states,
                                              training=False)
        new_state = tf.concat(new_states, axis=1) if len(new_states) > 1 else new_states[0]
        return hidden, new_state

    def _lookup(self, item_id):
        """Raw ids (any shape) -> int64 indices, -1 for unknown ids."""
        return self.id_to_index.lookup(item_id)

    def _top_k(self, hidden, fallback, seen=None):
        """hidden [B, H], fallback bool [B], seen int64 [B, T] (-1 = none) ->
        (item_ids string [B, K], scores float32 [B, K])."""
        scores = self._model.score_all(hidden)  # (B, n_items)
        if seen is not None:
            batch_rows = tf.broadcast_to(tf.range(tf.shape(seen, out_type=tf.int64)[0])[:, None],
                                         tf.shape(seen, out_type=tf.int64))
            mask = seen >= 0
            indices = tf.stack([tf.boolean_mask(batch_rows, mask), tf.boolean_mask(seen, mask)],
                               axis=1)
            scores = tf.tensor_scatter_nd_update(
                scores, indices, tf.fill([tf.shape(indices)[0]], tf.constant(-np.inf, tf.float32)))
        values, indices = tf.math.top_k(scores, k=self.k)  # (B, K)
        indices = tf.cast(indices, tf.int64)
        fallback = fallback[:, None]
        indices = tf.where(fallback, self.popular[None, :], indices)
        values = tf.where(fallback, tf.zeros_like(values), values)
        return self.index_to_id.lookup(indices), values

    def _stateful_step(self, session_id, item_id):
        """Advance the sessions of the batch by one click each (duplicates in order).

        Returns (hidden [B, H], has_state bool [B], known bool [B], seen int64 [B, max_seen]
        or None). Writes the new states and last-seen times, then evicts if due.
        """
        _check_batch(session_id=session_id, item_id=item_id)
        now = tf.timestamp()
        batch = tf.shape(session_id)[0]
        item_idx = self._lookup(item_id)
        known = item_idx >= 0
        # occurrence[i] = how many earlier rows have the same session id -> round of row i.
        _, codes = tf.unique(session_id)
        same = tf.equal(codes[:, None], codes[None, :])
        earlier = tf.linalg.band_part(tf.ones([batch, batch], tf.bool), -1, 0) & ~tf.eye(
            batch, dtype=tf.bool)
        occurrence = tf.reduce_sum(tf.cast(same & earlier, tf.int32), axis=1)
        n_rounds = tf.reduce_max(tf.concat([occurrence, [-1]], axis=0)) + 1

        hidden = tf.zeros([batch, self.hidden_size])
        has_state = tf.zeros([batch], tf.bool)
        seen = tf.fill([batch, self.max_seen if self.exclude_seen else 1],
                       tf.constant(-1, tf.int64))

        def one_round(r, hidden, has_state, seen):
            rows = tf.where(tf.equal(occurrence, r))[:, 0]  # (M,) int64
            sid = tf.gather(session_id, rows)
            idx = tf.gather(item_idx, rows)
            kn = tf.gather(known, rows)
            last = tf.ensure_shape(self.last_seen.lookup(sid), [None])
            live = (last >= 0.0) & (now - last <= self.session_idle_seconds)
            stored = tf.ensure_shape(self.states.lookup(sid), [None, self.state_size])
            state = tf.where(live[:, None], stored, 0.0)  # (M, S)
            new_hidden, new_state = self._advance(tf.where(kn, idx, 0), state)
            state_out = tf.where(kn[:, None], new_state, state)
            h = tf.where(kn[:, None], new_hidden, state[:, -self.hidden_size:])
            write = kn | live
            write_sid = tf.boolean_mask(sid, write)
            self.states.insert(write_sid, tf.boolean_mask(state_out, write))
            self.last_seen.insert(write_sid, tf.fill(tf.shape(write_sid), now))
            if self.exclude_seen:
                stored_seen = tf.ensure_shape(self.seen.lookup(sid), [None, self.max_seen])
                old = tf.where(live[:, None], stored_seen, tf.constant(-1, tf.int64))
                new = tf.where(kn[:, None], tf.concat([idx[:, None], old[:, :-1]], axis=1), old)
                self.seen.insert(write_sid, tf.boolean_mask(new, write))
                seen = tf.tensor_scatter_nd_update(seen, rows[:, None], new)
            hidden = tf.tensor_scatter_nd_update(hidden, rows[:, None], h)
            has_state = tf.tensor_scatter_nd_update(has_state, rows[:, None], write)
            return r + 1, hidden, has_state, seen

        _, hidden, has_state, seen = tf.while_loop(
            lambda r, *_: r < n_rounds, one_round, (tf.constant(0), hidden, has_state, seen))
        self._maybe_evict(now)
        return hidden, has_state, known, (seen if self.exclude_seen else None)

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
        if self.exclude_seen:
            self.seen.remove(session_id)

    # ------------------------------------------------------------------ signatures
    def _build_signatures(self):
        string_batch = tf.TensorSpec([None], tf.string)

        def serving_default(session_id, item_id):
            hidden, has_state, known, seen = self._stateful_step(session_id, item_id)
            item_ids, scores = self._top_k(hidden, ~has_state, seen)
            return {"item_ids": item_ids, "scores": scores, "known": known}

        def end_session(session_id):
            ended = tf.ensure_shape(self.last_seen.lookup(session_id), [None]) >= 0.0
            self._remove(session_id)
            return {"ended": ended}

        def rank(session_id, item_id, target_item_id):
            _check_batch(session_id=session_id, target_item_id=target_item_id)
            hidden, _, known, _ = self._stateful_step(session_id, item_id)
            scores = self._model.score_all(hidden)  # (B, n_items)
            target = self._lookup(target_item_id)
            target_known = target >= 0
            target_scores = tf.gather(scores, tf.maximum(target, 0), axis=1, batch_dims=1)
            n_higher = tf.reduce_sum(tf.cast(scores > target_scores[:, None], tf.int32), axis=1)
            n_ties = tf.reduce_sum(tf.cast(scores == target_scores[:, None], tf.int32),
                                   axis=1) - 1
            minus_one = tf.fill(tf.shape(n_higher), -1)
            return {"n_higher": tf.where(target_known, n_higher, minus_one),
                    "n_ties": tf.where(target_known, n_ties, minus_one), "known": known}

        def step(item_id, state, seen_item_ids=None):
            _check_batch(item_id=item_id, state=state, **(
                {} if seen_item_ids is None else {"seen_item_ids": seen_item_ids}))
            item_idx = self._lookup(item_id)
            known = item_idx >= 0
            has_state = tf.reduce_any(tf.not_equal(state, 0.0), axis=1)
            new_hidden, new_state = self._advance(tf.where(known, item_idx, 0), state)
            state_out = tf.where(known[:, None], new_state, state)
            hidden = tf.where(known[:, None], new_hidden, state[:, -self.hidden_size:])
            seen = None
            if seen_item_ids is not None:
                seen = tf.concat([tf.where(known, item_idx, -1)[:, None],
                                  self._lookup(seen_item_ids)], axis=1)
            item_ids, scores = self._top_k(hidden, ~(known | has_state), seen)
            return {"item_ids": item_ids, "scores": scores, "known": known, "state": state_out}

        def recommend(session_item_ids):
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
            return {"known": self._lookup(item_id) >= 0}

        def session_count():
            return {"count": self.last_seen.size()}

        state_spec = tf.TensorSpec([None, self.state_size], tf.float32)
        step_specs = [string_batch, state_spec]
        if self.exclude_seen:
            step_specs.append(tf.TensorSpec([None, None], tf.string))
        else:
            step = _without_seen(step)
        self.serving_default = tf.function(serving_default, autograph=False,
                                           input_signature=[string_batch, string_batch])
        self.end_session = tf.function(end_session, autograph=False, input_signature=[string_batch])
        self.rank = tf.function(rank, autograph=False, input_signature=[string_batch] * 3)
        self.step = tf.function(step, autograph=False, input_signature=step_specs)
        self.recommend = tf.function(recommend, autograph=False,
                                     input_signature=[tf.TensorSpec([None, None], tf.string)])
        self.lookup = tf.function(lookup, autograph=False, input_signature=[string_batch])
        self.session_count = tf.function(session_count, autograph=False, input_signature=[])

    def signatures(self) -> dict:
        """Signature name -> concrete function, for `tf.saved_model.save`."""
        return {name: getattr(self, name).get_concrete_function() for name in SIGNATURES}


def _check_batch(**tensors):
    """Fail with InvalidArgument unless all tensors have the same batch size (dimension 0)."""
    (first_name, first), *others = tensors.items()
    for name, tensor in others:
        tf.debugging.assert_equal(
            tf.shape(tensor)[0], tf.shape(first)[0],
            message=f"`{name}` and `{first_name}` should have the same batch size")


class _Untracked:
    """Holds an object without making it a SavedModel dependency (the Keras model would bring
    its optimizer and training state)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


SIGNATURES = ("serving_default", "end_session", "step", "recommend", "rank", "lookup",
              "session_count")


def _without_seen(step):
    def step_without_seen(item_id, state):
        return step(item_id, state)

    return step_without_seen


