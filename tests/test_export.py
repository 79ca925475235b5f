"""Tests for the SavedModel export (`tf_gru4rec.serving.export`): signatures, parity with the Keras
model, the three scoring paths, session state, eviction and atomic versioning."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

from tf_gru4rec.config import TrainConfig
from tf_gru4rec.data.vocabulary import ItemVocabulary
from tf_gru4rec.evaluation.metrics import target_ranks
from tf_gru4rec.serving import export as export_lib
from tf_gru4rec.serving.bundle import SessionBundle
from tf_gru4rec.serving.export import export_model, next_version
from tf_gru4rec.training import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_ITEMS, K = 40, 5
RAW_IDS = np.arange(N_ITEMS, dtype=np.int64) * 7 + 1000  # raw ids are not 0..n-1
SUPPORT = np.random.default_rng(0).permutation(N_ITEMS) + 1  # popularity is not index order


def ids(indices) -> np.ndarray:
    return np.asarray([str(RAW_IDS[i]) for i in indices], dtype=object)


def load(path) -> SessionBundle:
    """A version loaded the way TF Serving loads it (session-based loader)."""
    return SessionBundle(path)


def call(bundle, signature, **inputs) -> dict:
    """Run a signature by its SignatureDef tensor names; strings come back as str."""
    out = bundle.run(signature, bundle.check_inputs(signature, inputs))
    return {k: v.astype(str).astype(object) if v.dtype == object else v for k, v in out.items()}


def count(bundle) -> int:
    return int(call(bundle, "session_count", probe=np.zeros(1, np.int32))["count"][0])


def keras_scores(model, sessions) -> list[np.ndarray]:
    """Scores [B, n_items] after each step of equally long sessions (item indices [B, T])."""
    sessions = np.asarray(sessions)
    states = [tf.zeros((len(sessions), h)) for h in model.layer_sizes]
    out = []
    for t in range(sessions.shape[1]):
        hidden, states = model.step(tf.constant(sessions[:, t], tf.int32), states)
        out.append(model.score_all(hidden).numpy())
    return out


def randomize(model, seed: int) -> None:
    """Every weight (biases too) gets random values, so that a weight the export drops or
    mixes up changes the scores."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        if variable.trainable:
            variable.assign(rng.normal(0.0, 0.4, variable.shape).astype(np.float32))


@pytest.fixture(scope="module")
def model():
    config = TrainConfig(layers=[12, 10], batch_size=4, n_sample=0, jit_compile=False, seed=5,
                         dropout_p_hidden=0.3)
    model = build_model(config, N_ITEMS, item_support=SUPPORT)
    randomize(model, 5)
    return model


@pytest.fixture(scope="module")
def vocabulary():
    return ItemVocabulary(RAW_IDS)


@pytest.fixture(scope="module")
def plain(model, vocabulary, tmp_path_factory):
    path = export_model(model, vocabulary, str(tmp_path_factory.mktemp("plain") / "gru4rec"), k=K)
    return path, load(path)


@pytest.fixture(scope="module")
def seen_export(model, vocabulary, tmp_path_factory):
    path = export_model(model, vocabulary, str(tmp_path_factory.mktemp("seen") / "gru4rec"), k=K,
                        exclude_seen=True, max_seen=4)
    return load(path)


@pytest.fixture(scope="module")
def bounded(model, vocabulary, tmp_path_factory):
    path = export_model(model, vocabulary, str(tmp_path_factory.mktemp("bounded") / "gru4rec"),
                        k=K, session_capacity=30, session_idle_seconds=0.6, warmup=False)
    return load(path)


# ---------------------------------------------------------------------- layout and signatures
EXPECTED = {
    "serving_default": ({"session_id": ("DT_STRING", [-1]), "item_id": ("DT_STRING", [-1])},
                        {"item_ids": ("DT_STRING", [-1, K]), "scores": ("DT_FLOAT", [-1, K]),
                         "known": ("DT_BOOL", [-1])}),
    "end_session": ({"session_id": ("DT_STRING", [-1])}, {"ended": ("DT_BOOL", [-1])}),
    "step": ({"item_id": ("DT_STRING", [-1]), "state": ("DT_FLOAT", [-1, 22])},
             {"item_ids": ("DT_STRING", [-1, K]), "scores": ("DT_FLOAT", [-1, K]),
              "known": ("DT_BOOL", [-1]), "state": ("DT_FLOAT", [-1, 22])}),
    "recommend": ({"session_item_ids": ("DT_STRING", [-1, -1])},
                  {"item_ids": ("DT_STRING", [-1, K]), "scores": ("DT_FLOAT", [-1, K]),
                   "known": ("DT_BOOL", [-1])}),
    "rank": ({"session_id": ("DT_STRING", [-1]), "item_id": ("DT_STRING", [-1]),
              "target_item_id": ("DT_STRING", [-1])},
             {"n_higher": ("DT_INT32", [-1]), "n_ties": ("DT_INT32", [-1]),
              "known": ("DT_BOOL", [-1])}),
    "lookup": ({"item_id": ("DT_STRING", [-1])}, {"known": ("DT_BOOL", [-1])}),
    "click": ({"session_id": ("DT_STRING", [-1]), "item_id": ("DT_STRING", [-1]),
               "position": ("DT_INT64", [-1])},
              {"item_ids": ("DT_STRING", [-1, K]), "scores": ("DT_FLOAT", [-1, K]),
               "known": ("DT_BOOL", [-1]), "applied": ("DT_BOOL", [-1])}),
    "session_count": ({"probe": ("DT_INT32", [-1])}, {"count": ("DT_INT64", [-1])}),
}


def _infos(tensor_infos) -> dict:
    from tensorflow.core.framework import types_pb2

    return {k: (types_pb2.DataType.Name(v.dtype), [d.size for d in v.tensor_shape.dim])
            for k, v in tensor_infos.items()}


def test_signature_defs_have_documented_dtypes_and_shapes(plain):
    path, _ = plain
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    signatures = {k: v for k, v in proto.meta_graphs[0].signature_def.items()
                  if not k.startswith("__")}
    assert set(signatures) == set(EXPECTED)
    for name, (inputs, outputs) in EXPECTED.items():
        assert _infos(signatures[name].inputs) == inputs, name
        assert _infos(signatures[name].outputs) == outputs, name
        assert signatures[name].method_name == "tensorflow/serving/predict"


def test_layout_assets_and_warmup(plain, model, vocabulary):
    path, loaded = plain
    assert os.path.basename(path) == "1"
    with open(os.path.join(path, "assets", "items.txt")) as f:
        assert f.read().splitlines() == vocabulary.as_strings()
    with open(os.path.join(path, "assets.extra", "tf_gru4rec.json")) as f:
        info = json.load(f)
    assert info["k"] == K and info["state_size"] == 22 and info["n_items"] == N_ITEMS
    records = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in
               tf.data.TFRecordDataset(os.path.join(path, "assets.extra",
                                                    "tf_serving_warmup_requests"))]
    names = [r.predict_log.request.model_spec.signature_name for r in records]
    assert set(names) == set(EXPECTED) and names[-1] == "end_session"
    assert 0 < len(records) <= 1000
    # Only the inference weights and the (empty) session tables are saved: no optimizer state.
    saved = dict(tf.train.list_variables(os.path.join(path, "variables", "variables")))
    variables = [shape for name, shape in saved.items() if name.endswith("VARIABLE_VALUE")]
    gru = [list(v.shape) for v in model.gru.weights]
    for shape in gru:  # the GRU's weights as they are ...
        variables.remove(shape)
    # ... the item table and biases in row blocks (score_shards), and the sweep time.
    assert sorted(variables) == sorted([[32, 10], [8, 10], [32], [8], []])
    tables = {name: shape for name, shape in saved.items() if "table-" in name}
    # states, last_seen and clicks: keys and values, all empty
    assert len(tables) == 6 and all(shape[0] == 0 for shape in tables.values())


def test_warmup_records_run_and_leave_no_session(plain, model, vocabulary, tmp_path):
    path = export_model(model, vocabulary, str(tmp_path / "warm"), k=K)
    loaded = load(path)
    for record in tf.data.TFRecordDataset(
            os.path.join(path, "assets.extra", "tf_serving_warmup_requests")):
        request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        call(loaded, request.model_spec.signature_name, **inputs)
    assert count(loaded) == 0


# ---------------------------------------------------------------------- parity
_FRESH_PROCESS = """
import json, sys
import numpy as np
from tf_gru4rec.serving.bundle import SessionBundle
path, sessions, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
bundle = SessionBundle(path)
probe = {"probe": np.zeros(1, np.int32)}
result = {"count_before": int(bundle.run("session_count", probe)["count"][0])}
sids = np.asarray([f"s{i}" for i in range(len(sessions))], dtype=object)
for t in range(len(sessions[0])):
    o = bundle.run("serving_default", {"session_id": sids,
                   "item_id": np.asarray([s[t] for s in sessions], dtype=object)})
    result[f"ids{t}"] = o["item_ids"].astype(str)
    result[f"scores{t}"] = o["scores"]
result["count_after"] = int(bundle.run("session_count", probe)["count"][0])
np.savez(out, **result)
"""


def test_fresh_process_chained_steps_match_keras(plain, model, tmp_path):
    path, _ = plain
    rng = np.random.default_rng(7)
    sessions = rng.integers(0, N_ITEMS, size=(3, 6))
    out = tmp_path / "out.npz"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    subprocess.run([sys.executable, "-c", _FRESH_PROCESS, path,
                    json.dumps([list(ids(s)) for s in sessions]), str(out)],
                   check=True, env=env, timeout=120)
    served = np.load(out)
    assert int(served["count_before"]) == 0  # exported with an empty session table
    assert int(served["count_after"]) == 3
    for t, scores in enumerate(keras_scores(model, sessions)):
        top = np.argsort(-scores, axis=1, kind="stable")[:, :K]
        np.testing.assert_array_equal(served[f"ids{t}"], ids(top.ravel()).reshape(top.shape))
        np.testing.assert_allclose(served[f"scores{t}"], np.take_along_axis(scores, top, 1),
                                   atol=1e-5, rtol=0)


def test_stateful_stateless_and_recommend_are_identical(plain):
    _, loaded = plain
    rng = np.random.default_rng(11)
    sessions = rng.integers(0, N_ITEMS, size=(4, 5))
    sids = np.asarray([f"same-{i}" for i in range(4)], dtype=object)
    state = np.zeros((4, 22), np.float32)
    for t in range(sessions.shape[1]):
        items = ids(sessions[:, t])
        stateful = call(loaded, "serving_default", session_id=sids, item_id=items)
        stateless = call(loaded, "step", item_id=items, state=state)
        state = stateless["state"]
        whole = call(loaded, "recommend", session_item_ids=np.stack(
            [ids(s) for s in sessions[:, : t + 1]]))
        for other in (stateless, whole):
            np.testing.assert_array_equal(stateful["item_ids"], other["item_ids"])
            np.testing.assert_allclose(stateful["scores"], other["scores"], atol=1e-6, rtol=0)
            np.testing.assert_array_equal(stateful["known"], other["known"])


def test_recommend_skips_padding_anywhere(plain):
    _, loaded = plain
    a, b = ids([3, 9])
    rows = np.asarray([["", "", a, b], [a, b, "", ""], ["", a, "", b]], dtype=object)
    out = call(loaded, "recommend", session_item_ids=rows)
    assert (out["item_ids"] == out["item_ids"][0]).all()
    np.testing.assert_allclose(out["scores"][1:], np.repeat(out["scores"][:1], 2, axis=0),
                               atol=1e-6)


def test_rank_signature_matches_offline_ranks(plain, model):
    _, loaded = plain
    sessions = np.asarray([[1, 2], [5, 6], [7, 8]])
    targets = np.asarray([3, 30, 0])
    sids = np.asarray([f"rank-{i}" for i in range(3)], dtype=object)
    call(loaded, "rank", session_id=sids, item_id=ids(sessions[:, 0]),
         target_item_id=ids(sessions[:, 1]))
    out = call(loaded, "rank", session_id=sids, item_id=ids(sessions[:, 1]),
               target_item_id=ids(targets))
    scores = tf.constant(keras_scores(model, sessions)[-1])
    for mode, ties in (("standard", 0.0), ("conservative", 1.0), ("median", 0.5)):
        expected = target_ranks(scores, tf.constant(targets, tf.int32), mode).numpy()
        np.testing.assert_array_equal(out["n_higher"] + 1 + ties * out["n_ties"], expected)
    unknown = call(loaded, "rank", session_id=np.asarray(["rank-x"], dtype=object),
                   item_id=ids([1]), target_item_id=np.asarray(["nope"], dtype=object))
    assert unknown["n_higher"][0] == -1 and unknown["n_ties"][0] == -1


# ---------------------------------------------------------------------- session semantics
def test_duplicate_session_ids_in_a_batch_are_processed_in_order(plain):
    _, loaded = plain
    items = ids([4, 17, 23])
    together = call(loaded, "serving_default",
                    session_id=np.asarray(["dup", "other", "dup", "dup"], dtype=object),
                    item_id=np.asarray([items[0], items[2], items[1], items[2]], dtype=object))
    one_by_one = [call(loaded, "serving_default", session_id=np.asarray(["seq"], dtype=object),
                       item_id=items[i: i + 1]) for i in range(3)]
    for row, single in zip((0, 2, 3), one_by_one, strict=True):
        np.testing.assert_array_equal(together["item_ids"][row], single["item_ids"][0])
        np.testing.assert_allclose(together["scores"][row], single["scores"][0], atol=1e-6)
    # The next click continues after all three.
    after = [call(loaded, "serving_default", session_id=np.asarray([s], dtype=object),
                  item_id=ids([8])) for s in ("dup", "seq")]
    np.testing.assert_array_equal(after[0]["item_ids"], after[1]["item_ids"])


def test_unknown_items_and_popular_fallback(plain):
    _, loaded = plain
    popular = ids(np.argsort(-SUPPORT, kind="stable")[:K])
    assert list(popular) != list(ids(range(K)))
    n_before = count(loaded)
    first = call(loaded, "serving_default", session_id=np.asarray(["u1"], dtype=object),
                 item_id=np.asarray(["not-an-item"], dtype=object))
    assert not first["known"][0]
    np.testing.assert_array_equal(first["item_ids"][0], popular)
    assert (first["scores"] == 0).all()
    assert count(loaded) == n_before  # no state kept for an unknown first click
    known = call(loaded, "serving_default", session_id=np.asarray(["u1"], dtype=object),
                 item_id=ids([6]))
    again = call(loaded, "serving_default", session_id=np.asarray(["u1"], dtype=object),
                 item_id=np.asarray(["still-unknown"], dtype=object))
    assert known["known"][0] and not again["known"][0]
    np.testing.assert_array_equal(again["item_ids"], known["item_ids"])  # state not advanced
    stateless = call(loaded, "step", item_id=np.asarray(["nope"], dtype=object),
                     state=np.zeros((1, 22), np.float32))
    np.testing.assert_array_equal(stateless["item_ids"][0], popular)
    assert (stateless["state"] == 0).all()
    whole = call(loaded, "recommend", session_item_ids=np.asarray([["", "x", "y"]], dtype=object))
    np.testing.assert_array_equal(whole["item_ids"][0], popular)
    assert call(loaded, "lookup", item_id=np.asarray([popular[0], "x"], dtype=object))[
        "known"].tolist() == [True, False]


def test_explicit_popular_items(model, vocabulary, tmp_path):
    chosen = [str(x) for x in RAW_IDS[[9, 3, 31, 2, 20]]]
    loaded = load(export_model(model, vocabulary, str(tmp_path / "p"), k=K,
                               popular_items=chosen, warmup=False))
    out = call(loaded, "recommend", session_item_ids=np.asarray([[""]], dtype=object))
    assert list(out["item_ids"][0].astype(str)) == chosen
    with pytest.raises(ValueError, match="popular_items"):
        export_model(model, vocabulary, str(tmp_path / "q"), k=K, popular_items=["1000", "x"])


def test_end_session_restarts_the_session(plain):
    _, loaded = plain
    sid = np.asarray(["ending"], dtype=object)
    fresh = call(loaded, "serving_default", session_id=sid, item_id=ids([12]))
    call(loaded, "serving_default", session_id=sid, item_id=ids([13]))
    out = call(loaded, "end_session", session_id=np.asarray(["ending", "never"], dtype=object))
    assert out["ended"].tolist() == [True, False]
    again = call(loaded, "serving_default", session_id=sid, item_id=ids([12]))
    np.testing.assert_array_equal(again["item_ids"], fresh["item_ids"])


def test_exclude_seen_never_recommends_clicked_items(seen_export):
    loaded = seen_export
    clicked = np.asarray([0, 1, 2, 3])
    sid = np.asarray(["seen"], dtype=object)
    state = np.zeros((1, 22), np.float32)
    for t, item in enumerate(clicked):
        stateful = call(loaded, "serving_default", session_id=sid, item_id=ids([item]))
        stateless = call(loaded, "step", item_id=ids([item]), state=state,
                         seen_item_ids=np.asarray([[""] + list(ids(clicked[:t]))], dtype=object))
        state = stateless["state"]
        whole = call(loaded, "recommend", session_item_ids=ids(clicked[: t + 1])[None, :])
        for out in (stateful, stateless, whole):
            assert not set(out["item_ids"][0]) & set(ids(clicked[: t + 1]))
            assert np.isfinite(out["scores"]).all()
        np.testing.assert_array_equal(stateful["item_ids"], stateless["item_ids"])
        np.testing.assert_array_equal(stateful["item_ids"], whole["item_ids"])


# ---------------------------------------------------------------------- bounded memory
def test_capacity_bounds_the_session_table(bounded):
    loaded = bounded
    rng = np.random.default_rng(3)
    for start in range(0, 600, 12):  # 600 sessions, 20x the capacity
        sids = np.asarray([f"cap-{i}" for i in range(start, start + 12)], dtype=object)
        call(loaded, "serving_default", session_id=sids, item_id=ids(rng.integers(0, N_ITEMS, 12)))
        assert count(loaded) <= 30
    # The most recent sessions are kept: their next click continues the session ...
    recent = call(loaded, "serving_default", session_id=np.asarray(["cap-599"], dtype=object),
                  item_id=ids([5]))
    fresh = call(loaded, "serving_default", session_id=np.asarray(["new-a"], dtype=object),
                 item_id=ids([5]))
    assert not np.array_equal(recent["scores"], fresh["scores"])
    # ... the oldest were evicted and start over.
    old = call(loaded, "serving_default", session_id=np.asarray(["cap-0"], dtype=object),
               item_id=ids([5]))
    np.testing.assert_array_equal(old["item_ids"], fresh["item_ids"])
    np.testing.assert_allclose(old["scores"], fresh["scores"], atol=1e-6)


def test_idle_sessions_start_over_and_are_swept(bounded):
    loaded = bounded
    sid = np.asarray(["idle"], dtype=object)
    fresh = call(loaded, "serving_default", session_id=sid, item_id=ids([21]))
    time.sleep(0.8)  # > session_idle_seconds = 0.6
    call(loaded, "serving_default", session_id=np.asarray(["poke"], dtype=object),
         item_id=ids([1]))  # any request sweeps
    assert count(loaded) == 1  # only "poke" is left
    again = call(loaded, "serving_default", session_id=sid, item_id=ids([21]))
    np.testing.assert_array_equal(again["item_ids"], fresh["item_ids"])


# ---------------------------------------------------------------------- versions and errors
def test_versions_are_numbered_and_written_atomically(model, vocabulary, tmp_path, monkeypatch):
    base = tmp_path / "models" / "gru4rec"
    first = export_model(model, vocabulary, str(base), k=K, warmup=False)
    second = export_model(model, vocabulary, str(base), k=K, warmup=False)
    assert [os.path.basename(first), os.path.basename(second)] == ["1", "2"]
    assert next_version(str(base)) == 3
    with pytest.raises(FileExistsError):
        export_model(model, vocabulary, str(base), version=2, k=K)
    os.makedirs(base / "10")
    os.makedirs(base / "not-a-version")
    assert next_version(str(base)) == 11

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_lib, "write_warmup_requests", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_model(model, vocabulary, str(base), k=K)
    assert sorted(os.listdir(base)) == ["1", "10", "2", "not-a-version"]
    assert sorted(os.listdir(base.parent)) == ["gru4rec"]  # no staging directory left


def test_invalid_arguments(model, vocabulary, tmp_path):
    base = str(tmp_path / "bad")
    with pytest.raises(ValueError, match="`k`"):
        export_model(model, vocabulary, base, k=N_ITEMS + 1)
    with pytest.raises(ValueError, match="`k`"):
        export_model(model, vocabulary, base, k=0)
    with pytest.raises(ValueError, match="session_capacity"):
        export_model(model, vocabulary, base, session_capacity=0)
    with pytest.raises(ValueError, match="session_idle_seconds"):
        export_model(model, vocabulary, base, session_idle_seconds=0)
    with pytest.raises(ValueError, match="vocabulary has"):
        export_model(model, ItemVocabulary(RAW_IDS[:-1]), base)
    with pytest.raises(ValueError, match="non-empty single-line"):
        export_model(model, ItemVocabulary(np.asarray(["a\nb"] + [str(i) for i in range(39)],
                                                      dtype=object)), base)
    assert not os.path.exists(base) or os.listdir(base) == []
