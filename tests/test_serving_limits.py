"""The serving contract under abuse, checked on TF Serving's loading path: limits enforced
inside the graph, errors that name the inputs, duplicate session ids ordered without quadratic
work, idempotent retried clicks, and session memory bounded in bytes."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tf_gru4rec.config import TrainConfig
from tf_gru4rec.data.vocabulary import ItemVocabulary
from tf_gru4rec.serving.bundle import SessionBundle
from tf_gru4rec.serving.export import export_model
from tf_gru4rec.serving.graph.limits import ServingLimits
from tf_gru4rec.serving.graph.session_store import (
    effective_capacity,
    occurrence_index,
    session_bytes_bound,
)
from tf_gru4rec.training import build_model

N_ITEMS, K, UNITS = 25, 4, 8
RAW_IDS = np.asarray([str(100 + 3 * i) for i in range(N_ITEMS)], dtype=object)
LIMITS = ServingLimits(max_request_rows=64, max_id_bytes=16, max_session_length=6,
                       session_memory_bytes=1 << 20)


def strings(*values) -> np.ndarray:
    return np.asarray(values, dtype=object)


@pytest.fixture(scope="module")
def model():
    config = TrainConfig(layers=[UNITS], batch_size=4, n_sample=0, jit_compile=False, seed=2)
    return build_model(config, N_ITEMS, item_support=np.arange(N_ITEMS) + 1)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    path = export_model(model, ItemVocabulary(RAW_IDS),
                        str(tmp_path_factory.mktemp("limits") / "gru4rec"), k=K, limits=LIMITS,
                        exclude_seen=True, max_seen=5)
    with SessionBundle(path) as bundle:
        yield path, bundle


def run(bundle, signature, **inputs):
    return bundle.run(signature, bundle.check_inputs(signature, inputs))


def refused(bundle, signature, **inputs) -> str:
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        run(bundle, signature, **inputs)
    return info.value.message


def count(bundle) -> int:
    return int(run(bundle, "session_count", probe=np.zeros(1, np.int32))["count"][0])


# ---------------------------------------------------------------------- duplicate ordering
def test_occurrence_index_matches_numpy():
    rng = np.random.default_rng(0)
    for size, n_keys in ((0, 1), (1, 1), (17, 3), (500, 40), (300, 300)):
        keys = rng.integers(0, n_keys, size).astype(str).astype(object)
        seen: dict = {}
        expected = []
        for key in keys:
            expected.append(seen.get(key, 0))
            seen[key] = seen.get(key, 0) + 1
        got = occurrence_index(tf.constant(keys.astype(str), tf.string)).numpy()
        np.testing.assert_array_equal(got, np.asarray(expected, np.int32))


def test_many_duplicates_in_one_request_equal_clicks_one_by_one(exported):
    _, bundle = exported
    rng = np.random.default_rng(4)
    sids = rng.choice(strings("d1", "d2", "d3"), size=40)
    items = RAW_IDS[rng.integers(0, N_ITEMS, 40)]
    together = run(bundle, "serving_default", session_id=sids, item_id=items)
    for i, (sid, item) in enumerate(zip(sids, items, strict=True)):
        alone = run(bundle, "serving_default", session_id=strings("seq-" + sid),
                    item_id=strings(item))
        np.testing.assert_array_equal(together["item_ids"][i], alone["item_ids"][0])
        np.testing.assert_allclose(together["scores"][i], alone["scores"][0], atol=1e-6)


def test_empty_request(exported):
    _, bundle = exported
    out = run(bundle, "serving_default", session_id=strings(), item_id=strings())
    assert out["item_ids"].shape == (0, K) and out["known"].shape == (0,)


# ---------------------------------------------------------------------- limits and errors
def test_rows_over_the_limit_are_refused_naming_the_limit(exported):
    _, bundle = exported
    before = count(bundle)
    many = strings(*[f"r{i}" for i in range(65)])
    message = refused(bundle, "serving_default", session_id=many, item_id=RAW_IDS[:1].repeat(65))
    assert "65 rows" in message and "at most 64" in message and "max_request_rows" in message
    assert count(bundle) == before  # refused before any state changed
    for signature, inputs in (
            ("lookup", {"item_id": RAW_IDS[:1].repeat(65)}),
            ("end_session", {"session_id": many}),
            ("recommend", {"session_item_ids": RAW_IDS[:1].repeat(65)[:, None]}),
            ("step", {"item_id": RAW_IDS[:1].repeat(65), "state": np.zeros((65, UNITS),
                                                                          np.float32),
                      "seen_item_ids": np.full((65, 1), "", object)})):
        assert "max_request_rows" in refused(bundle, signature, **inputs), signature
    assert run(bundle, "lookup", item_id=RAW_IDS[:1].repeat(64))["known"].all()


def test_long_session_ids_and_sessions_are_refused(exported):
    _, bundle = exported
    before = count(bundle)
    message = refused(bundle, "serving_default", session_id=strings("ok", "x" * 1_000_000),
                      item_id=RAW_IDS[:2])
    assert "1000000 bytes" in message and "at most 16" in message and "max_id_bytes" in message
    assert count(bundle) == before
    assert "max_id_bytes" in refused(bundle, "click", session_id=strings("y" * 17),
                                     item_id=RAW_IDS[:1], position=np.zeros(1, np.int64))
    assert "max_id_bytes" in refused(bundle, "rank", session_id=strings("y" * 17),
                                     item_id=RAW_IDS[:1], target_item_id=RAW_IDS[:1])
    run(bundle, "serving_default", session_id=strings("z" * 16), item_id=RAW_IDS[:1])
    message = refused(bundle, "recommend", session_item_ids=RAW_IDS[None, :7])
    assert "7 items per row" in message and "max_session_length" in message


def test_mismatched_lengths_name_both_inputs(exported):
    _, bundle = exported
    message = refused(bundle, "serving_default", session_id=strings("a", "b"),
                      item_id=RAW_IDS[:3])
    assert "`item_id` has 3 rows but `session_id` has 2" in message
    message = refused(bundle, "step", item_id=RAW_IDS[:2], state=np.zeros((3, UNITS), np.float32),
                      seen_item_ids=np.full((2, 1), "", object))
    assert "`state` has 3 rows but `item_id` has 2" in message
    message = refused(bundle, "rank", session_id=strings("a"), item_id=RAW_IDS[:1],
                      target_item_id=RAW_IDS[:2])
    assert "`target_item_id` has 2 rows but `session_id` has 1" in message


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_state_is_refused(exported, bad):
    _, bundle = exported
    state = np.zeros((2, UNITS), np.float32)
    state[1, 3] = bad
    message = refused(bundle, "step", item_id=RAW_IDS[:2], state=state,
                      seen_item_ids=np.full((2, 1), "", object))
    assert "`state` should hold finite numbers" in message


def test_limits_are_validated_and_recorded(exported, model, tmp_path):
    path, _ = exported
    with open(os.path.join(path, "assets.extra", "tf_gru4rec.json")) as f:
        info = json.load(f)
    assert info["limits"] == {"max_request_rows": 64, "max_id_bytes": 16,
                              "max_session_length": 6, "session_memory_bytes": 1 << 20,
                              "request_work": 50_000_000, "scoring_memory_bytes": 128 << 20}
    for field in ("max_request_rows", "max_id_bytes", "max_session_length",
                  "session_memory_bytes", "request_work", "scoring_memory_bytes"):
        for value in (0, -3, 2.5, True):
            with pytest.raises(ValueError, match=field):
                ServingLimits(**{field: value})
    with pytest.raises(ValueError, match="session_memory_bytes"):
        export_model(model, ItemVocabulary(RAW_IDS), str(tmp_path / "tiny"),
                     limits=ServingLimits(session_memory_bytes=100))


# ---------------------------------------------------------------------- memory in bytes
def test_session_capacity_follows_the_memory_budget(model, tmp_path):
    limits = ServingLimits(max_id_bytes=64, session_memory_bytes=20_000)
    per_session = session_bytes_bound(limits, UNITS, 0)
    assert per_session >= 3 * 64 + 4 * UNITS  # at least the ids and the state
    capacity = effective_capacity(100_000, limits, UNITS, 0)
    assert capacity == 20_000 // per_session and 1 <= capacity < 100
    assert effective_capacity(5, limits, UNITS, 0) == 5  # the smaller bound wins
    path = export_model(model, ItemVocabulary(RAW_IDS), str(tmp_path / "mem"), k=K,
                        limits=limits, warmup=False)
    with open(os.path.join(path, "assets.extra", "tf_gru4rec.json")) as f:
        assert json.load(f)["session_capacity"] == capacity
    with SessionBundle(path) as bundle:
        for start in range(0, 10 * capacity, 7):
            sids = strings(*[f"{'s' * 40}{i}" for i in range(start, start + 7)])
            run(bundle, "serving_default", session_id=sids, item_id=RAW_IDS[:7])
            assert count(bundle) <= capacity


# ---------------------------------------------------------------------- retried clicks
def test_a_retried_click_is_not_applied_twice(exported):
    _, bundle = exported
    sid = strings("retry")
    first = run(bundle, "click", session_id=sid, item_id=RAW_IDS[[3]], position=np.array([0]))
    second = run(bundle, "click", session_id=sid, item_id=RAW_IDS[[5]], position=np.array([1]))
    retry = run(bundle, "click", session_id=sid, item_id=RAW_IDS[[5]], position=np.array([1]))
    assert first["applied"].tolist() == second["applied"].tolist() == [True]
    assert retry["applied"].tolist() == [False]
    np.testing.assert_array_equal(retry["item_ids"], second["item_ids"])
    np.testing.assert_allclose(retry["scores"], second["scores"], atol=1e-6)
    stale = run(bundle, "click", session_id=sid, item_id=RAW_IDS[[3]], position=np.array([0]))
    assert stale["applied"].tolist() == [False]
    # The same two clicks without positions (serving_default) reach the same state ...
    ref = strings("retry-ref")
    run(bundle, "serving_default", session_id=ref, item_id=RAW_IDS[[3]])
    run(bundle, "serving_default", session_id=ref, item_id=RAW_IDS[[5]])
    # ... so the next click gives the same answer on both sessions; serving_default counts
    # clicks too, so positions continue after clicks sent without them.
    third = run(bundle, "click", session_id=sid, item_id=RAW_IDS[[8]], position=np.array([2]))
    ref_third = run(bundle, "click", session_id=ref, item_id=RAW_IDS[[8]],
                    position=np.array([2]))
    assert third["applied"].tolist() == ref_third["applied"].tolist() == [True]
    np.testing.assert_array_equal(third["item_ids"], ref_third["item_ids"])
    np.testing.assert_allclose(third["scores"], ref_third["scores"], atol=1e-6)


def test_click_positions_in_one_request_and_after_a_gap(exported):
    _, bundle = exported
    out = run(bundle, "click", session_id=strings("g", "g", "g"), item_id=RAW_IDS[[1, 2, 2]],
              position=np.array([0, 1, 1]))
    assert out["applied"].tolist() == [True, True, False]  # a duplicate row is a retry
    gap = run(bundle, "click", session_id=strings("g"), item_id=RAW_IDS[[4]],
              position=np.array([7]))  # clicks 2..6 never arrived: this one still counts
    assert gap["applied"].tolist() == [True]
    assert run(bundle, "click", session_id=strings("g"), item_id=RAW_IDS[[4]],
               position=np.array([7]))["applied"].tolist() == [False]
    # A session the server does not know (new, ended, idle or evicted) starts at any position.
    run(bundle, "end_session", session_id=strings("g"))
    assert run(bundle, "click", session_id=strings("g"), item_id=RAW_IDS[[4]],
               position=np.array([3]))["applied"].tolist() == [True]
    assert "non-negative" in refused(bundle, "click", session_id=strings("g"),
                                     item_id=RAW_IDS[[4]], position=np.array([-1]))


# ---------------------------------------------------------------------- from the CLI
def test_cli_export_options_reach_the_served_graph(model, tmp_path):
    """`tf-gru4rec export` with every limit and scoring option: each reaches the version
    (recorded, and enforced by the graph on TF Serving's loading path)."""
    from tf_gru4rec.cli import main
    from tf_gru4rec.training import save_model_dir

    config = TrainConfig(layers=[UNITS], batch_size=4, n_sample=0, jit_compile=False, seed=2)
    save_model_dir(str(tmp_path / "model"), model, ItemVocabulary(RAW_IDS), config)
    base = tmp_path / "base"
    assert main(["-v", "WARNING", "export", "--model", str(tmp_path / "model"), "--base",
                 str(base), "--k", str(K), "--max-request-rows", "3", "--max-id-bytes", "5",
                 "--max-session-length", "2", "--session-memory-mb", "1",
                 "--request-work", "1000", "--scoring-memory-mb", "2",
                 "--score-precision", "int8", "--score-shards", "1"]) == 0
    path = str(base / "1")
    with open(os.path.join(path, "assets.extra", "tf_gru4rec.json")) as f:
        info = json.load(f)
    assert info["limits"] == {"max_request_rows": 3, "max_id_bytes": 5, "max_session_length": 2,
                              "session_memory_bytes": 1 << 20, "request_work": 1000,
                              "scoring_memory_bytes": 2 << 20}
    assert info["score_precision"] == "int8" and info["score_shards"] == 1
    assert info["session_capacity"] == effective_capacity(100_000, ServingLimits(
        max_id_bytes=5, session_memory_bytes=1 << 20), UNITS, 0)
    dtypes = tf.train.load_checkpoint(os.path.join(path, "variables", "variables")) \
        .get_variable_to_dtype_map()
    assert tf.int8 in dtypes.values()  # the int8 scoring table was saved
    with SessionBundle(path) as bundle:
        assert "max_request_rows" in refused(bundle, "lookup", item_id=RAW_IDS[:4])
        assert "max_id_bytes" in refused(bundle, "serving_default", session_id=strings("123456"),
                                         item_id=RAW_IDS[:1])
        assert "max_session_length" in refused(bundle, "recommend",
                                               session_item_ids=RAW_IDS[None, :3])
