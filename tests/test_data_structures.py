"""Item vocabulary, session log and preprocessing."""

import numpy as np
import pytest
from conftest import frame

from tf_gru4rec.data import preprocess
from tf_gru4rec.data.session_log import SessionLog
from tf_gru4rec.data.vocabulary import ItemVocabulary


def test_vocabulary_round_trip_and_unknown(tmp_path):
    vocab = ItemVocabulary.from_events([30, 10, 30, 20])
    np.testing.assert_array_equal(vocab.raw_ids, [30, 10, 20])
    np.testing.assert_array_equal(vocab.lookup([10, 99, 20]), [1, -1, 2])
    np.testing.assert_array_equal(vocab.to_raw([2, 0]), [20, 30])
    with pytest.raises(KeyError, match="99"):
        vocab.lookup([99], strict=True)
    vocab.save(tmp_path / "v.json")
    assert ItemVocabulary.load(tmp_path / "v.json") == vocab


def test_vocabulary_extend_keeps_old_indices_and_strings(tmp_path):
    vocab = ItemVocabulary(np.array(["b", "a"], dtype=object))
    grown = vocab.extend(["c", "a", "d"])
    np.testing.assert_array_equal(grown.raw_ids, ["b", "a", "c", "d"])
    np.testing.assert_array_equal(grown.lookup(["b", "a"]), vocab.lookup(["b", "a"]))
    grown.save(tmp_path / "v.json")
    assert ItemVocabulary.load(tmp_path / "v.json") == grown
    with pytest.raises(ValueError, match="unique"):
        ItemVocabulary(["x", "x"])


def test_session_log_orders_sessions_by_start_and_events_by_time(tiny_events):
    vocab = ItemVocabulary.from_events(tiny_events["ItemId"])  # 10,20,30,40,50 -> 0..4
    log = SessionLog.from_events(tiny_events.sample(frac=1.0, random_state=0), vocab)
    # start times: s1 0, s3 3, s2 5, s4 9
    np.testing.assert_array_equal(log.session_ids, [1, 3, 2, 4])
    np.testing.assert_array_equal(log.offsets, [0, 3, 7, 9, 11])
    np.testing.assert_array_equal(log.session(1), vocab.lookup([50, 10, 20, 30]))
    assert log.n_predictions == 2 + 3 + 1 + 1
    np.testing.assert_array_equal(log.item_support(), [2, 3, 3, 2, 1])


def test_session_log_drops_unknown_items(tiny_events):
    vocab = ItemVocabulary([10, 20, 30])
    log = SessionLog.from_events(tiny_events, vocab)
    assert log.n_events == 8
    with pytest.raises(KeyError):
        SessionLog.from_events(tiny_events, vocab, drop_unknown=False)


def test_filters_iterate_until_stable():
    # item 9 is rare; removing it shortens session 2 to one event, which is then dropped,
    # which makes item 7 rare in the next round.
    rows = [(1, 5, 0), (1, 6, 1), (2, 9, 0), (2, 7, 1), (3, 5, 0), (3, 6, 1), (4, 7, 0),
            (4, 5, 1)]
    report = []
    out = preprocess.filter_sessions_and_items(frame(rows), 2, 2, report=report)
    assert sorted(out["SessionId"].unique()) == [1, 3]
    assert any(r["events_removed"] for r in report)
    once = preprocess.filter_sessions_and_items(frame(rows), 2, 2, iterate=False)
    assert len(once) >= len(out)


def test_time_split_and_known_items():
    rows = [(1, 5, 0), (1, 6, 10), (2, 5, 50), (2, 6, 80), (3, 8, 91), (3, 5, 99),
            (4, 5, 92), (4, 6, 98)]
    train, test = preprocess.time_split(frame(rows), test_seconds=10)
    assert sorted(train["SessionId"].unique()) == [1, 2]
    assert sorted(test["SessionId"].unique()) == [3, 4]
    test = preprocess.restrict_to_known_items(test, train)
    assert sorted(test["SessionId"].unique()) == [4]  # item 8 unknown -> session 3 too short
