"""The signatures TensorFlow Serving runs, built from the parts of the served graph.

B is the number of rows of a request, K the export's `k`, S = sum(layers) the flattened GRU
state, H = layers[-1], T a session length. Every signature has an input, and all inputs and
outputs have the rows as their first dimension, as TF Serving's `--enable_batching` needs: it
refuses a run without inputs, concatenates requests along dimension 0 and splits every output
along it.

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
"""

from __future__ import annotations

import tensorflow as tf

from tf_gru4rec.serving.graph.checks import checked_inputs, checked_positions
from tf_gru4rec.serving.graph.gru_step import GRUStep
from tf_gru4rec.serving.graph.limits import ServingLimits
from tf_gru4rec.serving.graph.scoring import ItemScorer
from tf_gru4rec.serving.graph.session_store import SessionStore, apply_clicks
from tf_gru4rec.serving.graph.vocabulary import VocabularyTables

WARMUP_SESSION = "__tf_gru4rec_warmup__"  # the session id of the warmup requests
SIGNATURES = ("serving_default", "click", "end_session", "step", "recommend", "rank", "lookup",
              "session_count")


class Signatures:
    """The signature functions (see the module docstring), over the parts of the graph.

    Args:
      vocabulary, sessions, scorer, gru_step: the parts they read and write.
      limits: resolved `ServingLimits`, checked on every input.
      popular: int64 [K] item indices of the fallback recommendation.
      exclude_seen: never recommend items already clicked in the session.
    """

    def __init__(self, vocabulary: VocabularyTables, sessions: SessionStore, scorer: ItemScorer,
                 gru_step: GRUStep, limits: ServingLimits, popular, exclude_seen: bool):
        self.vocabulary = vocabulary
        self.sessions = sessions
        self.scorer = scorer
        self.gru_step = gru_step
        self.limits = limits
        self.popular = tf.constant(popular, tf.int64)
        self.exclude_seen = bool(exclude_seen)
        self.state_size = int(sum(gru_step.layer_sizes))
        self.hidden_size = int(gru_step.layer_sizes[-1])

    def functions(self) -> dict:
        """Signature name -> `tf.function` with its input signature, in `SIGNATURES` order."""
        strings = tf.TensorSpec([None], tf.string)
        step_specs = [strings, tf.TensorSpec([None, self.state_size], tf.float32)]
        if self.exclude_seen:
            step_specs.append(tf.TensorSpec([None, None], tf.string))
            step = self.step
        else:
            def step(item_id, state):
                return self.step(item_id, state)
        specs = {
            "serving_default": (self.serving_default, [strings, strings]),
            "click": (self.click, [strings, strings, tf.TensorSpec([None], tf.int64)]),
            "end_session": (self.end_session, [strings]),
            "step": (step, step_specs),
            "recommend": (self.recommend, [tf.TensorSpec([None, None], tf.string)]),
            "rank": (self.rank, [strings] * 3),
            "lookup": (self.lookup, [strings]),
            "session_count": (self.session_count, [tf.TensorSpec([None], tf.int32)]),
        }
        return {name: tf.function(specs[name][0], autograph=False,
                                  input_signature=specs[name][1]) for name in SIGNATURES}

    # ------------------------------------------------------------------ signatures
    def serving_default(self, session_id, item_id):
        session_id, item_id = checked_inputs(self.limits, ("session_id",),
                                             session_id=session_id, item_id=item_id)
        hidden, has_state, known, seen, _ = self._stateful_step(session_id, item_id)
        item_ids, scores = self._top_k(hidden, ~has_state, seen)
        return {"item_ids": item_ids, "scores": scores, "known": known}

    def click(self, session_id, item_id, position):
        session_id, item_id, position = checked_inputs(
            self.limits, ("session_id",), session_id=session_id, item_id=item_id,
            position=position)
        position = checked_positions(position)
        hidden, has_state, known, seen, applied = self._stateful_step(session_id, item_id,
                                                                      position)
        item_ids, scores = self._top_k(hidden, ~has_state, seen)
        return {"item_ids": item_ids, "scores": scores, "known": known, "applied": applied}

    def end_session(self, session_id):
        (session_id,) = checked_inputs(self.limits, ("session_id",), session_id=session_id)
        ended = self.sessions.held(session_id)
        with tf.control_dependencies([ended]):
            self.sessions.remove(session_id)
        return {"ended": ended}

    def rank(self, session_id, item_id, target_item_id):
        session_id, item_id, target_item_id = checked_inputs(
            self.limits, ("session_id",), session_id=session_id, item_id=item_id,
            target_item_id=target_item_id)
        hidden, _, known, _, _ = self._stateful_step(session_id, item_id)
        target = self.vocabulary.indices(target_item_id)
        target_known = target >= 0
        n_higher, n_ties = self.scorer.rank(hidden, tf.maximum(target, 0))
        minus_one = tf.fill(tf.shape(n_higher), -1)
        return {"n_higher": tf.where(target_known, n_higher, minus_one),
                "n_ties": tf.where(target_known, n_ties, minus_one), "known": known}

    def step(self, item_id, state, seen_item_ids=None):
        inputs = {"item_id": item_id, "state": state}
        if seen_item_ids is not None:
            inputs["seen_item_ids"] = seen_item_ids
        checked = checked_inputs(self.limits, sessions=("seen_item_ids",)
                                 if seen_item_ids is not None else (), **inputs)
        item_id, state = checked[:2]
        item_idx = self.vocabulary.indices(item_id)
        known = item_idx >= 0
        has_state = tf.reduce_any(tf.not_equal(state, 0.0), axis=1)
        new_hidden, new_state = self.gru_step(tf.where(known, item_idx, 0), state)
        state_out = tf.where(known[:, None], new_state, state)
        hidden = tf.where(known[:, None], new_hidden, state[:, -self.hidden_size:])
        seen = None
        if seen_item_ids is not None:
            seen = tf.concat([tf.where(known, item_idx, -1)[:, None],
                              self.vocabulary.indices(checked[2])], axis=1)
        item_ids, scores = self._top_k(hidden, ~(known | has_state), seen)
        return {"item_ids": item_ids, "scores": scores, "known": known, "state": state_out}

    def recommend(self, session_item_ids):
        (session_item_ids,) = checked_inputs(self.limits, sessions=("session_item_ids",),
                                             session_item_ids=session_item_ids)
        item_idx = self.vocabulary.indices(session_item_ids)  # (B, T)
        known = item_idx >= 0
        state = tf.zeros([tf.shape(item_idx)[0], self.state_size])

        def body(t, state):
            kn = known[:, t]
            _, new_state = self.gru_step(tf.where(kn, item_idx[:, t], 0), state)
            return t + 1, tf.where(kn[:, None], new_state, state)

        _, state = tf.while_loop(lambda t, _: t < tf.shape(item_idx)[1], body,
                                 (tf.constant(0), state))
        any_known = tf.reduce_any(known, axis=1)
        seen = tf.where(known, item_idx, -1) if self.exclude_seen else None
        item_ids, scores = self._top_k(state[:, -self.hidden_size:], ~any_known, seen)
        return {"item_ids": item_ids, "scores": scores, "known": any_known}

    def lookup(self, item_id):
        (item_id,) = checked_inputs(self.limits, item_id=item_id)
        return {"known": self.vocabulary.indices(item_id) >= 0}

    def session_count(self, probe):
        (probe,) = checked_inputs(self.limits, probe=probe)
        return {"count": tf.fill(tf.shape(probe), self.sessions.count())}

    # ------------------------------------------------------------------ shared pieces
    def _stateful_step(self, session_id, item_id, position=None):
        """Advance the sessions of the request by one click each (`apply_clicks`): ->
        (hidden [B, H], has_state bool [B], known bool [B], seen int64 [B, max_seen] or
        None, applied bool [B])."""
        item_idx = self.vocabulary.indices(item_id)
        hidden, has_state, seen, applied = apply_clicks(
            self.sessions, session_id, item_idx, self.gru_step, self.hidden_size, position)
        return hidden, has_state, item_idx >= 0, seen, applied

    def _top_k(self, hidden, fallback, seen=None):
        """hidden [B, H], fallback bool [B], seen int64 [B, T] (-1 = none) ->
        (item_ids string [B, K], scores float32 [B, K]): the fallback rows get the popular
        items with scores 0."""
        indices, values = self.scorer.top_k(hidden, seen)
        fallback = fallback[:, None]
        indices = tf.where(fallback, self.popular[None, :], indices)
        values = tf.where(fallback, tf.zeros_like(values), values)
        return self.vocabulary.ids(indices), values
