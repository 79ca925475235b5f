"""Tests for the synthetic click-log generator (`tf_gru4rec.data.synthetic`)."""

import numpy as np
import pandas as pd
import pytest

from tf_gru4rec.data.synthetic import (
    SyntheticConfig,
    generate_sessions,
    train_test_split_synthetic,
)

SMALL = SyntheticConfig(n_items=500, n_sessions=4_000, n_intents=25, seed=7)


@pytest.fixture(scope="module")
def events():
    return generate_sessions(SMALL)


def _transitions(events: pd.DataFrame) -> pd.DataFrame:
    """(prev, next) item pairs of consecutive events in the same session."""
    sessions = events["SessionId"].to_numpy()
    items = events["ItemId"].to_numpy()
    same = sessions[1:] == sessions[:-1]
    return pd.DataFrame({"prev": items[:-1][same], "next": items[1:][same]})


def test_deterministic_for_a_seed(events):
    pd.testing.assert_frame_equal(events, generate_sessions(SMALL))
    other = generate_sessions(SyntheticConfig(n_items=500, n_sessions=4_000, n_intents=25, seed=8))
    assert not events.equals(other)


def test_schema_and_dtypes(events):
    assert list(events.columns) == ["SessionId", "ItemId", "Time"]
    assert events["SessionId"].dtype == np.int64
    assert events["ItemId"].dtype == np.int64
    assert events["Time"].dtype == np.float64
    assert events["SessionId"].nunique() == SMALL.n_sessions
    assert events["ItemId"].nunique() <= SMALL.n_items
    assert events.notna().all().all()


def test_item_ids_are_large_and_non_contiguous(events):
    items = np.unique(events["ItemId"].to_numpy())
    assert items.min() >= 100_000_000 and items.max() < 1_000_000_000
    assert items.max() - items.min() > 100 * len(items)


def test_sorted_with_increasing_times(events):
    sessions = events["SessionId"].to_numpy()
    times = events["Time"].to_numpy()
    assert np.all(np.diff(sessions) >= 0)
    same = sessions[1:] == sessions[:-1]
    assert np.all(np.diff(times)[same] > 0)
    span = times.max() - times.min()
    assert 0.9 * SMALL.days * 86_400 < span < 1.1 * SMALL.days * 86_400


def test_session_lengths_min_two_and_heavy_tail(events):
    lengths = events.groupby("SessionId").size().to_numpy()
    assert lengths.min() == 2
    assert abs(lengths.mean() - SMALL.mean_session_length) < 0.5
    # Many short sessions and a long tail: with a geometric law of the same mean, 4,000
    # sessions would reach 8x the mean with probability below 0.1.
    assert np.mean(lengths == 2) > 0.15
    assert np.quantile(lengths, 0.99) >= 3 * SMALL.mean_session_length
    assert lengths.max() >= 8 * SMALL.mean_session_length


def test_popularity_is_heavy_tailed(events):
    counts = events["ItemId"].value_counts().to_numpy()  # descending
    top_share = counts[: SMALL.n_items // 100].sum() / counts.sum()
    assert top_share > 0.15  # a uniform catalogue would give 0.01


def test_successor_predictor_beats_popularity(events):
    """Sequential structure: "most frequent successors of the last item" hit@20 on held-out
    sessions is far above POP and above an upper bound of S-POP."""
    train = events[events["SessionId"] <= 0.8 * SMALL.n_sessions]
    test = events[events["SessionId"] > 0.8 * SMALL.n_sessions]
    pairs = _transitions(train)
    counts = pairs.groupby(["prev", "next"]).size().rename("n").reset_index()
    counts = counts.sort_values(["prev", "n"], ascending=[True, False], kind="stable")
    top20 = counts.groupby("prev").head(20)[["prev", "next"]].assign(hit=True)
    targets = _transitions(test)
    successor_hr = targets.merge(top20, on=["prev", "next"], how="left")["hit"].notna().mean()

    popular = train["ItemId"].value_counts().index[:20]
    pop_hr = targets["next"].isin(popular).mean()
    # S-POP recommends the session's own items, filled up with popular ones: its hits are at
    # most the re-clicks plus the POP hits.
    not_first = test["SessionId"].duplicated()
    reclick_rate = test.duplicated(["SessionId", "ItemId"])[not_first].mean()

    assert successor_hr > pop_hr + 0.3
    assert successor_hr > 2 * pop_hr
    assert successor_hr > reclick_rate + pop_hr


def test_split_keeps_known_items_and_long_sessions(events):
    train, test = train_test_split_synthetic(events, test_days=1.0)
    assert len(train) > 0 and len(test) > 0
    assert set(test["ItemId"]) <= set(train["ItemId"])
    assert test.groupby("SessionId").size().min() >= 2
    assert not set(train["SessionId"]) & set(test["SessionId"])
    session_end = train.groupby("SessionId")["Time"].max()
    assert session_end.max() < events["Time"].max() - 86_400
    # Test sessions are the ones ending in the last day; only unknown-item events and the
    # sessions they leave too short are gone.
    ends = events.groupby("SessionId")["Time"].max()
    late = set(ends.index[ends >= events["Time"].max() - 86_400])
    assert set(test["SessionId"]) <= late
    assert len(train) + len(test) <= len(events)


def test_config_is_validated():
    with pytest.raises(ValueError, match="n_items"):
        SyntheticConfig(n_items=0)
    with pytest.raises(ValueError, match="mean_session_length"):
        SyntheticConfig(mean_session_length=1.5)
    with pytest.raises(ValueError, match="intent_drift"):
        SyntheticConfig(intent_drift=0.7, repeat_probability=0.5)
    with pytest.raises(ValueError, match="n_intents"):
        SyntheticConfig(n_items=10, n_intents=20)


def test_tiny_and_edge_configs():
    events = generate_sessions(
        SyntheticConfig(n_items=3, n_sessions=5, n_intents=3, mean_session_length=2.0)
    )
    assert (events.groupby("SessionId").size() == 2).all()
    assert events["ItemId"].nunique() <= 3
