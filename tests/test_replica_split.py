"""How the sessions are dealt to replicas (`tf_gru4rec.data.replica_split`), and that training
uses that deal."""

import json

import numpy as np
import pytest

from tf_gru4rec.config import TrainConfig
from tf_gru4rec.data.distributed_input import TrainingSource
from tf_gru4rec.data.replica_split import pass_steps, replica_of_sessions
from tf_gru4rec.data.session_log import SessionLog
from tf_gru4rec.data.session_parallel import session_parallel_steps


def _log(lengths, n_items=50, seed=0) -> SessionLog:
    """A log whose sessions (in start-time order) have `lengths` events."""
    lengths = np.asarray(lengths)
    items = np.random.default_rng(seed).integers(1, n_items, lengths.sum()).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = len(lengths)
    return SessionLog(items, offsets, np.arange(n), np.arange(n, dtype=np.float64), n_items)


def _long_late_session(n_sessions=400, late=390, long_steps=150) -> np.ndarray:
    """Session lengths (events) of a log whose one long session starts near the end."""
    lengths = np.random.default_rng(5).integers(2, 9, n_sessions)
    lengths[late] = long_steps + 1
    return lengths


@pytest.mark.parametrize("slots", [1, 3, 8])
def test_pass_steps_counts_the_steps_of_a_session_parallel_pass(synthetic_log, slots):
    log = synthetic_log[0]
    assert pass_steps(log.lengths - 1, slots) == session_parallel_steps(log, slots).n_steps


def test_a_long_late_session_is_dealt_so_that_the_passes_end_together():
    steps = _long_late_session() - 1
    slots, replicas = 4, 2
    interleaved = max(pass_steps(steps[r::replicas], slots) for r in range(replicas))
    share = pass_steps(steps, slots) / replicas
    assert interleaved > 1.2 * share  # the tail this is about
    owner = replica_of_sessions(steps, replicas, slots)
    assert set(owner.tolist()) == {0, 1}
    dealt = [pass_steps(steps[owner == r], slots) for r in range(replicas)]
    assert max(dealt) <= 1.05 * share < interleaved, (dealt, share, interleaved)


def test_without_a_tail_the_sessions_are_interleaved():
    steps = np.random.default_rng(2).integers(1, 8, 500)
    for replicas, slots in ((2, 4), (3, 2)):
        np.testing.assert_array_equal(replica_of_sessions(steps, replicas, slots),
                                      np.arange(500) % replicas)
    np.testing.assert_array_equal(replica_of_sessions(steps, 1, 4), np.zeros(500))


def test_training_streams_use_the_deal_of_the_replica_split_setting():
    """`replica_split="balanced"` deals a tail-heavy log so the passes end together, keeping
    sessions whole and in order; the default deals session s to replica s % R."""
    log = _log(_long_late_session())
    source = TrainingSource(log=log)
    from tf_gru4rec.training.distributed import replica_streams

    def config(split):
        return TrainConfig().with_overrides({"batch_size": "8", "n_sample": "0",
                                             "steps_per_execution": "10",
                                             "replica_split": split})

    interleaved = [session_parallel_steps(log.subset(np.arange(r, log.n_sessions, 2)), 4).n_steps
                   for r in range(2)]
    share = session_parallel_steps(log, 4).n_steps / 2
    default = replica_streams(source, config("interleaved"), [0, 1], 2)
    assert [s.steps_per_epoch(0) for s in default] == interleaved
    balanced = replica_streams(source, config("balanced"), [0, 1], 2)
    steps = [s.steps_per_epoch(0) for s in balanced]
    assert max(steps) <= 1.05 * share < max(interleaved), (steps, interleaved, share)
    seen = []
    for stream in balanced:
        (load,) = stream.parts
        part = load()
        assert np.all(np.diff(part.start_times) >= 0)  # start-time order kept
        for s in range(part.n_sessions):
            original = int(part.session_ids[s])
            np.testing.assert_array_equal(part.session(s), log.session(original))
            seen.append(original)
    assert sorted(seen) == list(range(log.n_sessions))


def test_replica_split_is_checked():
    from tf_gru4rec.config_checks import check_config

    with pytest.raises(ValueError, match="'replica_split' should be one of interleaved, balanced"):
        check_config(TrainConfig().with_overrides({"replica_split": "random"}))


def test_the_balanced_deal_is_refused_with_shuffled_sessions_on_several_replicas():
    """Shuffling each replica's sessions every epoch undoes what the balanced deal is for."""
    from tf_gru4rec.training.distributed import replica_streams

    source = TrainingSource(log=_log(_long_late_session()))

    def config(split, shuffle):
        return TrainConfig().with_overrides({"batch_size": "8", "n_sample": "0",
                                             "replica_split": split,
                                             "shuffle_sessions": shuffle})

    with pytest.raises(ValueError, match="replica_split='balanced' with shuffle_sessions=True"):
        replica_streams(source, config("balanced", "true"), [0, 1], 2)
    assert len(replica_streams(source, config("balanced", "true"), [0], 1)) == 1
    assert len(replica_streams(source, config("interleaved", "true"), [0, 1], 2)) == 2
    assert len(replica_streams(source, config("balanced", "false"), [0, 1], 2)) == 2


def test_two_workers_train_on_the_balanced_deal(tmp_path):
    """`train --workers 2 --set replica_split=balanced` on a click log with a long late
    session: each epoch runs the balanced deal's steps, and every event is trained once."""
    from tf_gru4rec.cli import main

    lengths = _long_late_session(n_sessions=240, late=232, long_steps=90)
    log = _log(lengths, n_items=40)
    rows = [f"{s}\t{int(log.items[p])}\t{s * 1000 + (p - log.offsets[s])}"
            for s in range(log.n_sessions) for p in range(log.offsets[s], log.offsets[s + 1])]
    path = tmp_path / "clicks.tsv"
    path.write_text("SessionId\tItemId\tTime\n" + "\n".join(rows) + "\n")
    out = tmp_path / "model"
    assert main(["-v", "WARNING", "train", "--train", str(path), "--out", str(out),
                 "--preset", "quick", "--set", "n_epochs=1", "--set", "layers=8",
                 "--set", "batch_size=8", "--set", "n_sample=8", "--set",
                 "replica_split=balanced", "--workers", "2", "--sync", "block",
                 "--verbose", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    steps = lengths - 1
    owner = replica_of_sessions(steps, 2, 4)
    balanced = max(pass_steps(steps[owner == r], 4) for r in range(2))
    interleaved = max(pass_steps(steps[r::2], 4) for r in range(2))
    assert balanced < interleaved
    assert metrics["steps_per_epoch"] == [balanced]
    assert metrics["events_per_epoch"] == [int(steps.sum())]
