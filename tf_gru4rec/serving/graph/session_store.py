"""The session state of the stateful signatures (serving_default, click, end_session, rank).

`SessionStore` holds it in `MutableHashTable`s keyed by session id, exported empty. Memory is
bounded in sessions and in bytes:
  - a session idle for more than `idle_seconds` starts over from a zero state, and a sweep (at
    most every idle/10 seconds, run inside a request) removes such sessions;
  - after a request leaves more than the capacity, the least recently used sessions are
    removed down to 90% of it (so sweeps stay rare), never those of the request unless one
    request brings more new sessions than that. The capacity is `session_capacity`, lowered
    so that capacity x `session_bytes_bound()` fits `limits.session_memory_bytes` (session ids
    are at most `limits.max_id_bytes` long, so every session has a known worst-case size).

`apply_clicks` advances the sessions of a request by one click each. Duplicate session ids in
one request are processed in row order: the k-th occurrence of an id goes to round k, and each
round sees the state the previous one wrote. Finding the rounds sorts the rows once
(O(B log B)) and each round touches only its own rows, so a request costs time and memory
linear in its rows (up to the sort). Concurrent requests for the same session race: route a
session to one replica and send its clicks one after another.
"""

from __future__ import annotations

import tensorflow as tf

from tf_gru4rec.serving.graph.limits import ServingLimits

_LOW_WATER = 0.9
# Rough bytes of hash-map bookkeeping per entry and table (key string header, value tensor
# header, bucket); the worst case, not the average.
_ENTRY_OVERHEAD_BYTES = 160


class SessionStore(tf.Module):
    """GRU state, last-seen time, click count (and, with `max_seen`, the last items) of each
    session, with idle-time and least-recently-used eviction.

    Args:
      state_size: S, the flattened GRU state of a session.
      max_seen: items remembered per session (for `exclude_seen`); 0: none.
      capacity: the most sessions kept (see `effective_capacity`).
      idle_seconds: a session idle longer than this starts over and is removed.
    """

    def __init__(self, state_size: int, max_seen: int, capacity: int, idle_seconds: float):
        super().__init__(name="session_store")
        self.state_size = int(state_size)
        self.max_seen = int(max_seen)
        self.capacity = int(capacity)
        self.idle_seconds = float(idle_seconds)
        self.sweep_seconds = self.idle_seconds / 10.0
        self.low_water = max(1, int(self.capacity * _LOW_WATER))
        self.states = tf.lookup.experimental.MutableHashTable(
            tf.string, tf.float32, default_value=tf.zeros([self.state_size]), name="states")
        self.last_seen = tf.lookup.experimental.MutableHashTable(
            tf.string, tf.float64, default_value=-1.0, name="last_seen")
        self.clicks = tf.lookup.experimental.MutableHashTable(
            tf.string, tf.int64, default_value=0, name="clicks")
        if self.max_seen:
            self.seen = tf.lookup.experimental.MutableHashTable(
                tf.string, tf.int64, default_value=tf.constant([-1] * self.max_seen, tf.int64),
                name="seen")
        self.last_sweep = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="last_sweep")

    def live(self, session_id, now):
        """session_id string [M] -> bool [M]: the session has state, idle at most
        `idle_seconds` at time `now`."""
        last = tf.ensure_shape(self.last_seen.lookup(session_id), [None])
        return (last >= 0.0) & (now - last <= self.idle_seconds)

    def held(self, session_id):
        """session_id string [M] -> bool [M]: the table holds the session (idle or not)."""
        return tf.ensure_shape(self.last_seen.lookup(session_id), [None]) >= 0.0

    def click_counts(self, session_id, live):
        """int64 [M]: clicks applied to each live session so far (0 for the others)."""
        return tf.where(live, tf.ensure_shape(self.clicks.lookup(session_id), [None]), 0)

    def stored_states(self, session_id, live):
        """float32 [M, S]: the GRU state of each live session (zeros for the others)."""
        stored = tf.ensure_shape(self.states.lookup(session_id), [None, self.state_size])
        return tf.where(live[:, None], stored, 0.0)

    def stored_seen(self, session_id, live):
        """int64 [M, max_seen]: the last items of each live session, newest first (-1 = none)."""
        stored = tf.ensure_shape(self.seen.lookup(session_id), [None, self.max_seen])
        return tf.where(live[:, None], stored, tf.constant(-1, tf.int64))

    def write(self, session_id, write, state, clicks, now):
        """Store state [M, S] and clicks int64 [M] of the rows where `write` (bool [M]), seen
        at `now`; returns the session ids written."""
        written = tf.boolean_mask(session_id, write)
        self.states.insert(written, tf.boolean_mask(state, write))
        self.last_seen.insert(written, tf.fill(tf.shape(written), now))
        self.clicks.insert(written, tf.boolean_mask(clicks, write))
        return written

    def write_seen(self, written, seen):
        """Store the last items int64 [N, max_seen] of the sessions `written` [N]."""
        self.seen.insert(written, seen)

    def count(self):
        """int64 []: sessions held."""
        return self.last_seen.size()

    def maybe_evict(self, now):
        """Sweep when the table is over capacity or the last sweep is `sweep_seconds` old;
        returns the number of sessions removed."""
        due = (self.last_seen.size() > self.capacity) | (
            now - self.last_sweep >= self.sweep_seconds)
        return tf.cond(due, lambda: self._sweep(now), lambda: tf.constant(0, tf.int64))

    def _sweep(self, now):
        """Remove idle sessions, then the least recently used above the capacity."""
        keys, times = self.last_seen.export()
        keys, times = tf.ensure_shape(keys, [None]), tf.ensure_shape(times, [None])
        n = tf.size(keys, out_type=tf.int64)
        order = tf.argsort(times, direction="DESCENDING", stable=True)
        position = tf.cast(tf.math.invert_permutation(order), tf.int64)  # 0 = most recent
        keep = tf.where(n > self.capacity, tf.constant(self.low_water, tf.int64), n)
        evict = (now - times > self.idle_seconds) | (position >= keep)
        gone = tf.boolean_mask(keys, evict)
        self.remove(gone)
        self.last_sweep.assign(now)
        return tf.size(gone, out_type=tf.int64)

    def remove(self, session_id):
        """Forget the sessions session_id string [M]."""
        self.states.remove(session_id)
        self.last_seen.remove(session_id)
        self.clicks.remove(session_id)
        if self.max_seen:
            self.seen.remove(session_id)


def apply_clicks(store: SessionStore, session_id, item_idx, advance, hidden_size: int,
                 position=None):
    """Advance the sessions of a request by one click each (duplicates in row order).

    session_id string [B]; item_idx int64 [B] (-1: unknown item, which does not advance the
    state); advance: the GRU step, (item_idx int64 [M], state [M, S]) -> (hidden [M, H], new
    state [M, S]); hidden_size: H; position int64 [B] or None (always apply).
    Returns (hidden [B, H], has_state bool [B], seen int64 [B, max_seen] or None, applied
    bool [B]). Writes the new states, click counts and last-seen times, then evicts if due.
    """
    now = tf.timestamp()
    known = item_idx >= 0
    occurrence = occurrence_index(session_id)  # (B,) round of each row
    order = tf.argsort(occurrence, stable=True)  # rows round by round, in row order
    round_sizes = tf.math.bincount(occurrence)
    round_starts = tf.cumsum(round_sizes, exclusive=True)
    n_rounds = tf.size(round_sizes)
    n_seen = store.max_seen or 1

    def one_round(r, out_hidden, out_has_state, out_seen, out_applied):
        rows = tf.slice(order, [round_starts[r]], [round_sizes[r]])  # (M,)
        sid = tf.gather(session_id, rows)
        idx = tf.gather(item_idx, rows)
        kn = tf.gather(known, rows)
        live = store.live(sid, now)
        clicks = store.click_counts(sid, live)
        pos = clicks if position is None else tf.gather(position, rows)
        applied = ~live | (pos >= clicks)  # a retry of an applied click is not re-applied
        state = store.stored_states(sid, live)  # (M, S)
        advance_rows = kn & applied
        new_hidden, new_state = advance(tf.where(advance_rows, idx, 0), state)
        state_out = tf.where(advance_rows[:, None], new_state, state)
        hidden = tf.where(advance_rows[:, None], new_hidden, state[:, -hidden_size:])
        write = advance_rows | live
        written = store.write(sid, write, state_out, tf.where(applied, pos + 1, clicks), now)
        seen = tf.fill([tf.size(rows), n_seen], tf.constant(-1, tf.int64))
        if store.max_seen:
            old = store.stored_seen(sid, live)
            seen = tf.where(advance_rows[:, None],
                            tf.concat([idx[:, None], old[:, :-1]], axis=1), old)
            store.write_seen(written, tf.boolean_mask(seen, write))
        return (r + 1, out_hidden.write(r, hidden), out_has_state.write(r, write),
                out_seen.write(r, seen), out_applied.write(r, applied))

    def array(dtype, shape):
        return tf.TensorArray(dtype, size=n_rounds, infer_shape=False, element_shape=shape)

    _, hidden, has_state, seen, applied = tf.while_loop(
        lambda r, *_: r < n_rounds, one_round,
        (tf.constant(0), array(tf.float32, [None, hidden_size]),
         array(tf.bool, [None]), array(tf.int64, [None, n_seen]), array(tf.bool, [None])))
    back = tf.math.invert_permutation(order)  # row i is at position back[i] of the rounds
    hidden, has_state, seen, applied = (tf.gather(ta.concat(), back)
                                        for ta in (hidden, has_state, seen, applied))
    with tf.control_dependencies([hidden]):
        store.maybe_evict(now)
    return hidden, has_state, (seen if store.max_seen else None), applied


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


def effective_capacity(session_capacity: int, limits: ServingLimits, state_size: int,
                       max_seen: int) -> int:
    """The session capacity, lowered so that its worst case fits the memory budget."""
    by_memory = limits.session_memory_bytes // session_bytes_bound(limits, state_size, max_seen)
    if by_memory < 1:
        raise ValueError(f"`session_memory_bytes` ({limits.session_memory_bytes}) is smaller "
                         f"than one session's worst case "
                         f"({session_bytes_bound(limits, state_size, max_seen)} bytes)")
    return int(min(session_capacity, by_memory))
