"""A fresh export served through TensorFlow's C API (`TF_LoadSessionFromSavedModel`, the C++
loader TF Serving calls, then `TF_SessionRun` by tensor name) next to the Python session
loader: every signature, the warmup records, TF Serving's batching rules, and the graph's own
checks of shapes, states, session ids and click positions, which the C API does not make."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tf_gru4rec.config import TrainConfig
from tf_gru4rec.data.vocabulary import ItemVocabulary
from tf_gru4rec.serving.bundle import SessionBundle
from tf_gru4rec.serving.capi import CApiBundle
from tf_gru4rec.serving.export import export_model
from tf_gru4rec.serving.graph.limits import (
    MAX_CLICK_POSITION,
    MAX_DEFAULT_ROWS,
    SCORE_BYTES,
    ServingLimits,
)
from tf_gru4rec.serving.graph.signatures import SIGNATURES
from tf_gru4rec.training import build_model

N_ITEMS, K, LAYERS = 50, 4, [6, 5]
S = sum(LAYERS)
RAW_IDS = np.asarray([f"item-{7 * i + 3}" for i in range(N_ITEMS)], dtype=object)
CHUNK_ROWS = 3  # scoring memory for 3 rows at a time: requests below span several chunks


def strings(*values) -> np.ndarray:
    return np.asarray(values, dtype=object)


@pytest.fixture(scope="module")
def model():
    config = TrainConfig(layers=LAYERS, batch_size=4, n_sample=0, jit_compile=False, seed=4)
    model = build_model(config, N_ITEMS, item_support=np.arange(N_ITEMS)[::-1] + 1)
    rng = np.random.default_rng(4)
    for variable in model.weights:
        if variable.trainable:
            variable.assign(rng.normal(0.0, 0.5, variable.shape).astype(np.float32))
    return model


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    """One export with `exclude_seen` (so `step` has its [B, T] string input) whose scoring
    runs in chunks of CHUNK_ROWS rows, loaded by both loaders."""
    limits = ServingLimits(max_request_rows=40, scoring_memory_bytes=CHUNK_ROWS * N_ITEMS
                           * SCORE_BYTES)
    path = export_model(model, ItemVocabulary(RAW_IDS),
                        str(tmp_path_factory.mktemp("capi") / "gru4rec"), k=K,
                        exclude_seen=True, max_seen=3, limits=limits)
    with CApiBundle(path) as capi, SessionBundle(path) as python:
        yield path, capi, python


def example_inputs(bundle, signature: str, rows: int, prefix: str, seed: int = 0) -> dict:
    """Legal inputs of `rows` rows for a signature of `bundle`, every input name covered."""
    rng = np.random.default_rng(seed)
    items = RAW_IDS[rng.integers(0, N_ITEMS, rows)]
    if rows > 1:
        items[1] = "not-an-item"
    values = {
        "session_id": strings(*[f"{prefix}-{i % max(1, rows - 2)}" for i in range(rows)]),
        "item_id": items,
        "target_item_id": RAW_IDS[rng.integers(0, N_ITEMS, rows)],
        "position": np.arange(rows, dtype=np.int64),
        "state": rng.uniform(-0.99, 0.99, (rows, S)).astype(np.float32),
        "seen_item_ids": np.where(rng.random((rows, 3)) < 0.3, "",
                                  RAW_IDS[rng.integers(0, N_ITEMS, (rows, 3))]).astype(object),
        "session_item_ids": np.concatenate(
            [np.full((rows, 1), "", object), RAW_IDS[rng.integers(0, N_ITEMS, (rows, 4))]],
            axis=1),
        "probe": np.zeros(rows, np.int32),
    }
    return {key: values[key] for key in bundle.signature_defs[signature].inputs}


def assert_same(a: dict, b: dict, where: str):
    assert set(a) == set(b), where
    for key in a:
        if a[key].dtype.kind in "f":
            np.testing.assert_allclose(a[key], b[key], atol=1e-6, err_msg=f"{where}: {key}")
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{where}: {key}")


def refused(bundle, signature: str, inputs: dict) -> str:
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        bundle.run(signature, inputs)
    return info.value.message


def count(bundle) -> int:
    return int(bundle.run("session_count", {"probe": np.zeros(1, np.int32)})["count"][0])


# ---------------------------------------------------------------------- every signature
def test_the_c_api_loader_sees_every_signature(exported):
    _, capi, python = exported
    assert set(capi.signature_defs) == set(SIGNATURES) == set(python.signature_defs)
    for name in SIGNATURES:
        assert capi.signature_defs[name] == python.signature_defs[name], name


@pytest.mark.parametrize("rows", [1, 7])
def test_every_signature_answers_alike_through_the_c_api_and_python(exported, rows):
    _, capi, python = exported
    for signature in SIGNATURES:
        inputs = example_inputs(capi, signature, rows, f"alike-{rows}-{signature}")
        a, b = capi.run(signature, inputs), python.run(signature, inputs)
        assert_same(a, b, signature)
        for key, value in a.items():  # every output has one row per request row
            assert value.shape[0] == rows, (signature, key)
            if value.dtype.kind == "f":
                assert np.isfinite(value).all(), (signature, key)
    assert count(capi) == count(python) > 0


def test_warmup_records_replay_through_the_c_api(exported):
    path, capi, python = exported
    records = list(python.warmup_requests())
    assert {name for name, _ in records} == set(SIGNATURES)  # session_count too
    before = count(capi)
    for signature, inputs in records:
        capi.run(signature, inputs)
    assert count(capi) == before  # the last record ends the warmup session


# ---------------------------------------------------------------------- TF Serving's batching
def test_every_signature_is_usable_under_tf_serving_batching(exported):
    """BatchingSession refuses a Run() without inputs, concatenates requests along dimension 0
    and splits every output along it: each signature needs an input, and every input and
    output a batch dimension first."""
    _, capi, _ = exported
    for name, sig in capi.signature_defs.items():
        assert sig.inputs, f"{name} has no input"
        for kind, infos in (("input", sig.inputs), ("output", sig.outputs)):
            for key, info in infos.items():
                dims = [d.size for d in info.tensor_shape.dim]
                assert not info.tensor_shape.unknown_rank and dims and dims[0] == -1, (
                    f"{name} {kind} {key} has shape {dims}: not batched on dimension 0")


def test_concatenated_requests_split_back_into_each_answer(exported):
    """What the batcher does with the stateless signatures: one run on two requests' rows
    equals the two runs."""
    _, capi, _ = exported
    for signature in ("step", "recommend", "lookup", "session_count"):
        first = example_inputs(capi, signature, 2, "b1", seed=1)
        second = example_inputs(capi, signature, 3, "b2", seed=2)
        both = capi.run(signature, {k: np.concatenate([first[k], second[k]]) for k in first})
        alone = [capi.run(signature, first), capi.run(signature, second)]
        assert_same({k: v[:2] for k, v in both.items()}, alone[0], signature)
        assert_same({k: v[2:] for k, v in both.items()}, alone[1], signature)


# ---------------------------------------------------------------------- checks in the graph
BAD_SHAPES = [
    ("lookup", {"item_id": RAW_IDS[:6].reshape(2, 3)}, "`item_id` should have shape [B]"),
    ("lookup", {"item_id": np.asarray(RAW_IDS[0], dtype=object)},
     "`item_id` should have shape [B]"),
    ("serving_default", {"session_id": strings("a"), "item_id": RAW_IDS[:1].reshape(1, 1)},
     "`item_id` should have shape [B]"),
    ("step", {"item_id": RAW_IDS[:1], "state": np.zeros(S, np.float32),
              "seen_item_ids": np.full((1, 1), "", object)},
     f"`state` should have shape [B, {S}]; received shape [{S}]"),
    ("step", {"item_id": RAW_IDS[:1], "state": np.zeros((1, S + 1), np.float32),
              "seen_item_ids": np.full((1, 1), "", object)},
     f"`state` should have shape [B, {S}]; received shape [1 {S + 1}]"),
    ("step", {"item_id": RAW_IDS[:1], "state": np.zeros((1, S), np.float32),
              "seen_item_ids": np.full(1, "", object)},
     "`seen_item_ids` should have shape [B, T]"),
    ("recommend", {"session_item_ids": RAW_IDS[:3]}, "`session_item_ids` should have shape [B, T]"),
    ("click", {"session_id": strings("a"), "item_id": RAW_IDS[:1],
               "position": np.zeros((1, 1), np.int64)}, "`position` should have shape [B]"),
    ("session_count", {"probe": np.zeros((), np.int32)}, "`probe` should have shape [B]"),
]


@pytest.mark.parametrize("signature,inputs,expected", BAD_SHAPES,
                         ids=[f"{s}-{m.split('`')[1]}-{n}" for n, (s, _, m) in
                              enumerate(BAD_SHAPES)])
def test_bad_shapes_are_refused_by_the_graph_naming_input_and_shape(exported, signature, inputs,
                                                                     expected):
    _, capi, python = exported
    before = count(capi)
    message = refused(capi, signature, inputs)
    assert expected in message
    assert refused(python, signature, inputs) == message  # what the dev server answers
    assert count(capi) == before


@pytest.mark.parametrize("bad", [1.0000001, 2.0, -2.0, 1e20, 3e38, np.inf, -np.inf, np.nan])
def test_states_no_gru_can_produce_are_refused(exported, bad):
    _, capi, python = exported
    state = np.zeros((2, S), np.float32)
    state[1, 4] = bad
    inputs = {"item_id": RAW_IDS[:2], "state": state, "seen_item_ids": np.full((2, 1), "", object)}
    for bundle in (capi, python):
        assert "`state` should hold finite numbers within [-1, 1]" in refused(bundle, "step",
                                                                               inputs)


def test_extreme_legal_states_give_finite_scores(exported):
    _, capi, _ = exported
    state = np.where(np.arange(S) % 2, 1.0, -1.0).astype(np.float32)[None].repeat(2, axis=0)
    out = capi.run("step", {"item_id": strings(RAW_IDS[0], "unknown"), "state": state,
                            "seen_item_ids": np.full((2, 1), "", object)})
    assert np.isfinite(out["scores"]).all() and np.isfinite(out["state"]).all()
    assert np.abs(out["state"]).max() <= 1.0


def test_an_empty_session_id_is_refused(exported):
    _, capi, _ = exported
    before = count(capi)
    for signature in ("serving_default", "click", "rank", "end_session"):
        inputs = example_inputs(capi, signature, 2, "empty")
        inputs["session_id"] = strings("fine", "")
        assert "a `session_id` is empty" in refused(capi, signature, inputs), signature
    assert count(capi) == before


@pytest.mark.parametrize("position", [10**12, 2**63 - 1, MAX_CLICK_POSITION + 1, -1])
def test_click_positions_are_bounded(exported, position):
    _, capi, _ = exported
    sid = strings(f"pos-{position}")
    first = capi.run("click", {"session_id": sid, "item_id": RAW_IDS[:1],
                               "position": np.zeros(1, np.int64)})
    assert first["applied"].tolist() == [True]
    message = refused(capi, "click", {"session_id": sid, "item_id": RAW_IDS[1:2],
                                      "position": np.asarray([position], np.int64)})
    assert f"non-negative and at most {MAX_CLICK_POSITION}; received {position}" in message
    # The refused click neither blocked nor wrapped the session's count: the next one applies,
    # a retry of the first does not.
    nxt = capi.run("click", {"session_id": sid, "item_id": RAW_IDS[2:3],
                             "position": np.ones(1, np.int64)})
    assert nxt["applied"].tolist() == [True]
    retry = capi.run("click", {"session_id": sid, "item_id": RAW_IDS[:1],
                               "position": np.zeros(1, np.int64)})
    assert retry["applied"].tolist() == [False]
    assert capi.run("click", {"session_id": sid, "item_id": RAW_IDS[:1],
                              "position": np.asarray([MAX_CLICK_POSITION])})["applied"].all()


# ---------------------------------------------------------------------- work per request
def test_the_default_row_cap_follows_the_catalogue():
    limits = ServingLimits()
    assert limits.max_request_rows is None
    assert limits.resolved(50_000).max_request_rows == 1_000
    assert limits.resolved(1_000_000).max_request_rows == 50
    assert limits.resolved(10**9).max_request_rows == 1
    assert limits.resolved(40).max_request_rows == MAX_DEFAULT_ROWS
    assert ServingLimits(request_work=10**6).resolved(50_000).max_request_rows == 20
    assert ServingLimits(max_request_rows=7).resolved(50_000).max_request_rows == 7
    # Score chunks: rows x items x SCORE_BYTES within the scoring memory.
    assert limits.score_chunk_rows(50_000) * 50_000 * SCORE_BYTES <= limits.scoring_memory_bytes
    assert limits.score_chunk_rows(10**9) == 1
    with pytest.raises(ValueError, match="request_work"):
        ServingLimits(request_work=0)


def test_the_export_records_its_row_cap_and_chunks(exported):
    path, _, _ = exported
    with open(os.path.join(path, "assets.extra", "tf_gru4rec.json")) as f:
        info = json.load(f)
    assert info["limits"]["max_request_rows"] == 40
    assert info["score_chunk_rows"] == CHUNK_ROWS


def test_chunked_scoring_equals_the_keras_model(exported, model):
    """11 rows scored in chunks of 3 (the last one short): the same top K and ranks as the
    Keras model scoring all rows at once."""
    _, capi, _ = exported
    rng = np.random.default_rng(9)
    rows = 11
    idx = rng.integers(0, N_ITEMS, rows)
    target = rng.integers(0, N_ITEMS, rows)
    seen = rng.integers(0, N_ITEMS, (rows, 2))
    hidden, _ = model.step(tf.constant(idx, tf.int32), [tf.zeros((rows, h)) for h in LAYERS])
    scores = model.score_all(hidden).numpy()  # (rows, N_ITEMS)
    out = capi.run("rank", {"session_id": strings(*[f"chunk-rank-{i}" for i in range(rows)]),
                            "item_id": RAW_IDS[idx], "target_item_id": RAW_IDS[target]})
    expected = (scores > scores[np.arange(rows), target][:, None]).sum(axis=1)
    np.testing.assert_array_equal(out["n_higher"], expected)
    out = capi.run("step", {"item_id": RAW_IDS[idx], "state": np.zeros((rows, S), np.float32),
                            "seen_item_ids": RAW_IDS[seen]})
    masked = scores.copy()
    masked[np.arange(rows)[:, None], np.concatenate([idx[:, None], seen], axis=1)] = -np.inf
    top = np.argsort(-masked, axis=1, kind="stable")[:, :K]
    np.testing.assert_array_equal(out["item_ids"].astype(str), RAW_IDS[top].astype(str))
    np.testing.assert_allclose(out["scores"], np.take_along_axis(masked, top, axis=1),
                               atol=1e-5)


@pytest.mark.slow
def test_the_worst_request_stays_within_the_stated_memory_bound(tmp_path):
    """`benchmarks/serving_work_bound.py` on 20k items at the default row cap (2,500 rows):
    the worst `rank` and `step` requests (the largest score matrices) stay within the export's
    `request_memory_bytes`. Sessions are capped at one item so that the bound is mostly the
    scoring memory (scored in one piece, these requests need about 1 GB)."""
    out = tmp_path / "bound.json"
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "benchmarks", "serving_work_bound.py")
    subprocess.run([sys.executable, script, "--items", "20000", "--units", "32",
                    "--max-session-length", "1", "--signatures", "rank", "step", "--rates",
                    "--out", str(out)], check=True, timeout=1200, capture_output=True)
    with open(out) as f:
        report = json.load(f)
    assert report["limits"]["max_request_rows"] == 2500
    for result in report["worst"]:
        assert result["rows"] == 2500
        assert result["peak_rss_growth_mb"] * 2**20 <= report["request_memory_bytes"], result
