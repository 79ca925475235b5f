"""Session-parallel steps and the tf.data input built on them."""

import numpy as np
import pytest

from tf_gru4rec.data.input_pipeline import SessionParallelInput
from tf_gru4rec.data.session_log import SessionLog
from tf_gru4rec.data.session_parallel import session_order, session_parallel_steps
from tf_gru4rec.data.vocabulary import ItemVocabulary


def test_hand_written_schedule(tiny_events):
    # Log order (by start time): s1 [10 20 30], s3 [50 10 20 30], s2 [20 40], s4 [30 40];
    # indices 10->0, 20->1, 30->2, 40->3, 50->4. Two slots:
    #   slot 0: s1 (steps 0-1), s2 (step 2), s4 (step 3: both slots free at 3, lowest index wins)
    #   slot 1: s3 (steps 0-2), then nothing left -> invalid at step 3.
    vocab = ItemVocabulary.from_events(tiny_events["ItemId"])
    steps = session_parallel_steps(SessionLog.from_events(tiny_events, vocab), batch_size=2)
    np.testing.assert_array_equal(steps.inputs, [[0, 4], [1, 0], [1, 1], [2, 0]])
    np.testing.assert_array_equal(steps.targets, [[1, 0], [2, 1], [3, 2], [3, 0]])
    np.testing.assert_array_equal(steps.reset, [[1, 1], [0, 0], [1, 0], [1, 0]])
    np.testing.assert_array_equal(steps.valid, [[1, 1], [1, 1], [1, 1], [1, 0]])


def naive_schedule(log, batch_size):
    """The original iterator's logic, one step at a time, without vectorisation."""
    queue = [s for s in range(log.n_sessions) if log.lengths[s] >= 2]
    slots = [None] * batch_size  # (session, position)
    rows = []
    fresh = [False] * batch_size
    for b in range(batch_size):
        if queue:
            slots[b], fresh[b] = (queue.pop(0), 0), True
    while any(s is not None for s in slots):
        row = []
        for b, slot in enumerate(slots):
            if slot is None:
                row.append((0, 0, False, False))
                continue
            s, p = slot
            items = log.session(s)
            row.append((items[p], items[p + 1], fresh[b], True))
        rows.append(row)
        fresh = [False] * batch_size
        for b, slot in enumerate(slots):
            if slot is None:
                continue
            s, p = slot
            if p + 2 < log.lengths[s]:
                slots[b] = (s, p + 1)
            elif queue:
                slots[b], fresh[b] = (queue.pop(0), 0), True
            else:
                slots[b] = None
    return np.array(rows)


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_matches_naive_iterator_and_covers_every_event(synthetic_log, batch_size):
    log = synthetic_log[0]
    steps = session_parallel_steps(log, batch_size)
    naive = naive_schedule(log, batch_size)
    np.testing.assert_array_equal(steps.inputs, naive[..., 0])
    np.testing.assert_array_equal(steps.targets, naive[..., 1])
    np.testing.assert_array_equal(steps.reset, naive[..., 2].astype(bool))
    np.testing.assert_array_equal(steps.valid, naive[..., 3].astype(bool))
    assert steps.valid.sum() == log.n_predictions


def test_shuffled_order_is_a_seeded_permutation(synthetic_log):
    log = synthetic_log[0]
    a, b = session_order(log, True, seed=1), session_order(log, True, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, session_order(log, True, seed=2))
    assert sorted(a) == list(range(log.n_sessions))
    steps = session_parallel_steps(log, 16, a)
    assert steps.valid.sum() == log.n_predictions


def test_dataset_yields_the_steps_and_follows_the_epoch(synthetic_log):
    log = synthetic_log[0]
    source = SessionParallelInput(log, 8, n_sample=5, seed=4, shuffle_sessions=True)
    elements = list(source.dataset().as_numpy_iterator())
    expected = source.steps(0)
    assert len(elements) == expected.n_steps
    np.testing.assert_array_equal(np.stack([e["inputs"] for e in elements]), expected.inputs)
    np.testing.assert_array_equal(np.stack([e["reset"] for e in elements]), expected.reset)
    negatives = np.stack([e["negatives"] for e in elements])
    assert negatives.shape == (expected.n_steps, 5)
    assert negatives.min() >= 0 and negatives.max() < log.n_items
    again = list(source.dataset().as_numpy_iterator())  # same epoch -> same data
    np.testing.assert_array_equal(np.stack([e["negatives"] for e in again]), negatives)
    source.epoch = 1
    epoch1 = list(source.dataset().as_numpy_iterator())
    np.testing.assert_array_equal(np.stack([e["inputs"] for e in epoch1]),
                                  source.steps(1).inputs)
    assert not np.array_equal(np.stack([e["negatives"] for e in epoch1])[:10], negatives[:10])


def test_dataset_runs_without_tf_data_autotuning(synthetic_log):
    # Autotuning's optimisation thread made every epoch's iterator teardown wait 1-2 s with
    # the GIL held (BENCHMARKS.md, issue 22): the training input has a fixed prefetch instead.
    from tf_gru4rec.data.distributed_input import ReplicaStream, TrainingSource

    log = synthetic_log[0]
    source = SessionParallelInput(log, 8, n_sample=5)
    # the training loop's input (every scale), and Keras fit's
    stream = ReplicaStream(TrainingSource(log=log).parts(0, 1), 8, log.item_support(),
                           n_sample=5)
    for dataset in (source.dataset(), source.dataset(blocks=True), stream.dataset(0)):
        assert dataset.options().autotune.enabled is False
        assert dataset.options().deterministic is True


def test_dataset_resumes_mid_epoch(synthetic_log):
    log = synthetic_log[0]
    source = SessionParallelInput(log, 8, n_sample=0)
    full = list(source.dataset().as_numpy_iterator())
    source.skip_steps = 7
    rest = list(source.dataset().as_numpy_iterator())
    assert len(rest) == len(full) - 7
    np.testing.assert_array_equal(rest[0]["targets"], full[7]["targets"])


def test_evaluation_steps_keep_slots_full_and_cover_every_event(synthetic_log):
    from tf_gru4rec.data.session_parallel import evaluation_steps

    log = synthetic_log[0]
    steps = evaluation_steps(log)
    assert steps.valid.sum() == log.n_predictions
    assert steps.n_steps == log.lengths.max() - 1 or steps.valid.mean() > 0.9
    assert 32 <= steps.inputs.shape[1] <= 512
    assert evaluation_steps(log, batch_size=7).inputs.shape[1] == 7
