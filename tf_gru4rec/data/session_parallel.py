"""Session-parallel mini-batches (SPEC.md, "Session-parallel mini-batches").

B slots each hold one session; every step feeds each slot's current event as input and its next
event as target. When a slot's session runs out, the next session (in the log's order) takes the
slot and the reset mask marks it, so the model zeroes that slot's hidden state. Slots left
without a session at the end of the log are marked invalid (the original shrinks the batch
instead: same arithmetic, static shapes). One pass covers every event that has a successor.
"""

from __future__ import annotations

import dataclasses
import heapq

import numpy as np

from tf_gru4rec.data.session_log import SessionLog


@dataclasses.dataclass(frozen=True)
class StepArrays:
    """One pass of session-parallel steps.

    Attributes:
      inputs: int32 [T, B] current item of each slot (0 where invalid).
      targets: int32 [T, B] next item of each slot (0 where invalid).
      reset: bool [T, B] the slot started a new session at this step (zero its state first).
      valid: bool [T, B] the slot holds an event at this step.
    """

    inputs: np.ndarray
    targets: np.ndarray
    reset: np.ndarray
    valid: np.ndarray

    @property
    def n_steps(self) -> int:
        return self.inputs.shape[0]


def session_order(log: SessionLog, shuffle: bool = False, seed: int = 0) -> np.ndarray:
    """Order in which sessions enter the slots: log order (start time), or a seeded shuffle."""
    order = np.arange(log.n_sessions)
    if shuffle:
        order = np.random.default_rng(seed).permutation(order)
    return order


def slot_schedule(n_steps_of: np.ndarray, slots: int) -> tuple[np.ndarray, np.ndarray]:
    """Where sessions of `n_steps_of` [S] steps each (all > 0), taken in order, run in a pass
    with `slots` slots: (slot int64 [S], first step int64 [S]). A session takes the slot that
    frees first, the lowest index on ties (as the original GRU4Rec iterator)."""
    slot_of = np.empty(len(n_steps_of), dtype=np.int64)
    start_step = np.empty(len(n_steps_of), dtype=np.int64)
    heap = [(0, slot) for slot in range(slots)]
    for k, n in enumerate(np.asarray(n_steps_of).tolist()):
        free_at, slot = heap[0]
        slot_of[k], start_step[k] = slot, free_at
        heapq.heapreplace(heap, (free_at + n, slot))
    return slot_of, start_step


def session_parallel_steps(
    log: SessionLog, batch_size: int, order: np.ndarray | None = None
) -> StepArrays:
    """All steps of one pass over `log` with `batch_size` slots.

    A finished slot takes the next session in `order`; slots that finish at the same step are
    refilled in slot-index order (as the original GRU4Rec iterator). Sessions shorter than 2
    events are skipped.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` should be a positive integer. Received: {batch_size}")
    order = np.arange(log.n_sessions) if order is None else np.asarray(order)
    n_steps_of = log.lengths[order] - 1
    order, n_steps_of = order[n_steps_of > 0], n_steps_of[n_steps_of > 0]
    slot_of, start_step = slot_schedule(n_steps_of, batch_size)
    n_total = int((start_step + n_steps_of).max()) if len(order) else 0
    # Scatter every (session, step) pair into the [T, B] grid.
    step_session = np.repeat(np.arange(len(order)), n_steps_of)
    first_of = np.cumsum(n_steps_of) - n_steps_of
    within = np.arange(len(step_session)) - np.repeat(first_of, n_steps_of)
    t = start_step[step_session] + within
    b = slot_of[step_session]
    pos = log.offsets[order][step_session] + within
    inputs = np.zeros((n_total, batch_size), dtype=np.int32)
    targets = np.zeros((n_total, batch_size), dtype=np.int32)
    reset = np.zeros((n_total, batch_size), dtype=bool)
    valid = np.zeros((n_total, batch_size), dtype=bool)
    inputs[t, b] = log.items[pos]
    targets[t, b] = log.items[pos + 1]
    valid[t, b] = True
    reset[start_step, slot_of] = True
    return StepArrays(inputs, targets, reset, valid)


def evaluation_steps(log: SessionLog, batch_size: int | None = None) -> StepArrays:
    """Steps for evaluation: longest sessions first, so slots stay full until the end.

    Each test session starts from a zero state, so the order does not change the metrics; it
    only decides how many steps run half empty. With `batch_size=None` the batch is sized so
    that the longest session sets the number of steps: clip(predictions / longest, 32, 512).
    Offline evaluation and the serving replay share this layout.
    """
    lengths = log.lengths
    order = np.argsort(-lengths, kind="stable")
    if not batch_size:
        longest = max(int(lengths.max()) - 1, 1) if log.n_sessions else 1
        batch_size = int(np.clip(-(-log.n_predictions // longest), 32, 512))
    return session_parallel_steps(log, batch_size, order)
