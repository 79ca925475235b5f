"""Reduced-precision scoring tables (`score_precision` bfloat16 / int8) rank like the exact
float32 export, on TF Serving's loading path."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tf_gru4rec.config import TrainConfig
from tf_gru4rec.data.vocabulary import ItemVocabulary
from tf_gru4rec.serving.bundle import SessionBundle
from tf_gru4rec.serving.export import export_model
from tf_gru4rec.serving.graph.scoring import quantize_rows, shard_bounds
from tf_gru4rec.training import build_model

N_ITEMS, UNITS, K = 400, 24, 20
RAW_IDS = np.asarray([f"i{i}" for i in range(N_ITEMS)], dtype=object)
# Tolerances on 300 (session, next item) pairs of a model with random weights.
# Measured here: top-20 overlap 0.99-1.0, recall@20 within 1 of 300 events.
TOLERANCE = {"bfloat16": {"overlap": 0.95, "recall": 0.01, "mrr": 0.002, "moved": 0.05},
             "int8": {"overlap": 0.95, "recall": 0.01, "mrr": 0.002, "moved": 0.05}}


def test_quantize_rows_numpy_and_graph_agree():
    rng = np.random.default_rng(0)
    matrix = rng.normal(0, 2, (50, 7)).astype(np.float32)
    matrix[3] = 0.0
    table, scale = quantize_rows(matrix)
    assert table.dtype == np.int8 and np.abs(table).max() == 127 and scale[3] == 1.0
    assert (np.abs(table * scale[:, None] - matrix) <= scale[:, None] / 2 + 1e-6).all()
    graph_table, graph_scale = quantize_rows(tf.constant(matrix))
    np.testing.assert_array_equal(graph_table.numpy(), table)
    np.testing.assert_allclose(graph_scale.numpy(), scale, rtol=1e-6)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    config = TrainConfig(layers=[UNITS], batch_size=4, n_sample=0, jit_compile=False, seed=4)
    model = build_model(config, N_ITEMS, item_support=np.arange(N_ITEMS) + 1)
    rng = np.random.default_rng(3)
    for variable in model.weights:
        if variable.trainable:
            variable.assign(rng.normal(0, 0.5, variable.shape).astype(np.float32))
    bundles = {}
    for precision in ("float32", "bfloat16", "int8"):
        path = export_model(model, ItemVocabulary(RAW_IDS),
                            str(tmp_path_factory.mktemp(precision) / "m"), k=K,
                            score_precision=precision)
        bundles[precision] = SessionBundle(path)
        assert bundles[precision].warmup() > 0
    yield model, bundles
    for bundle in bundles.values():
        bundle.close()


def test_float32_export_is_exact(exports):
    model, bundles = exports
    sessions = np.random.default_rng(1).integers(0, N_ITEMS, (5, 3))
    out = bundles["float32"].run("recommend", {"session_item_ids": RAW_IDS[sessions]})
    states = [tf.zeros((5, UNITS))]
    for t in range(3):
        hidden, states = model.step(tf.constant(sessions[:, t], tf.int32), states)
    scores = model.score_all(hidden).numpy()
    top = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    np.testing.assert_array_equal(out["item_ids"].astype(str), RAW_IDS[top].astype(str))


@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_reduced_precision_ranks_like_float32(exports, precision):
    _, bundles = exports
    rng = np.random.default_rng(7)
    sessions = RAW_IDS[rng.integers(0, N_ITEMS, (300, 4))]
    targets = RAW_IDS[rng.integers(0, N_ITEMS, 300)]
    exact = bundles["float32"].run("recommend", {"session_item_ids": sessions})
    reduced = bundles[precision].run("recommend", {"session_item_ids": sessions})
    overlap = np.mean([len(set(a) & set(b)) / K for a, b in
                       zip(exact["item_ids"], reduced["item_ids"], strict=True)])
    assert overlap >= TOLERANCE[precision]["overlap"], overlap
    np.testing.assert_allclose(reduced["scores"], exact["scores"], atol=0.1 * np.abs(
        exact["scores"]).max())
    metrics, ranks = {}, {}
    for name in ("float32", precision):
        bundle = bundles[name]
        sids = np.asarray([f"{precision}-{i}" for i in range(300)], dtype=object)
        for t in range(sessions.shape[1]):  # the replay path: `rank`, click by click
            target = targets if t == sessions.shape[1] - 1 else sessions[:, t + 1]
            out = bundle.run("rank", {"session_id": sids, "item_id": sessions[:, t],
                                      "target_item_id": target})
        rank = ranks[name] = out["n_higher"] + 1 + out["n_ties"]  # conservative ties
        metrics[name] = {"recall": np.mean(rank <= K), "mrr": np.mean(np.where(
            rank <= K, 1.0 / rank, 0.0))}
    for key in ("recall", "mrr"):
        assert abs(metrics[precision][key] - metrics["float32"][key]) <= TOLERANCE[precision][
            key], metrics
    moved = np.mean(np.abs(ranks[precision] - ranks["float32"]) > 5)  # of N_ITEMS = 400
    assert moved <= TOLERANCE[precision]["moved"], moved


def test_unknown_precision_is_refused(exports, tmp_path):
    model, _ = exports
    with pytest.raises(ValueError, match="score_precision"):
        export_model(model, ItemVocabulary(RAW_IDS), str(tmp_path / "x"), k=K,
                     score_precision="float16")


def test_shard_bounds():
    assert shard_bounds(50_000, 20, 2) == [0, 25008, 50_000]
    assert shard_bounds(40, 10, 2) == [0, 40]  # a second block would hold 8 < k items
    assert shard_bounds(30, 6, 4) == [0, 30]  # blocks of at least 16 items
    for n_items, k, shards in ((1000, 20, 3), (997, 7, 8), (64, 16, 4)):
        bounds = shard_bounds(n_items, k, shards)
        assert bounds[0] == 0 and bounds[-1] == n_items and len(bounds) - 1 <= shards
        assert all(b % 16 == 0 for b in bounds[:-1])
        assert all(hi - lo >= max(k, 1) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True))
    with pytest.raises(ValueError, match="score_shards"):
        shard_bounds(100, 5, 0)


def test_sharded_scoring_gives_the_same_items_and_ties(tmp_path):
    """Many items score exactly alike (repeated rows): the per-shard top-K and its merge must
    pick the same items, in the same order, as one top-K over all items."""
    config = TrainConfig(layers=[8], batch_size=4, n_sample=0, jit_compile=False, seed=1)
    model = build_model(config, N_ITEMS, item_support=np.arange(N_ITEMS) + 1)
    rng = np.random.default_rng(2)
    for variable in model.weights:
        if variable.trainable:
            variable.assign(rng.normal(0, 0.5, variable.shape).astype(np.float32))
    weights = model.item_scores.item_weights.numpy()
    model.item_scores.item_weights.assign(weights[rng.integers(0, 30, N_ITEMS)])  # 30 distinct
    model.item_scores.item_bias.assign(np.zeros(N_ITEMS, np.float32))
    sessions = RAW_IDS[rng.integers(0, N_ITEMS, (20, 3))]
    outputs = []
    for shards in (1, 3, 7):
        path = export_model(model, ItemVocabulary(RAW_IDS), str(tmp_path / str(shards)), k=K,
                            score_shards=shards, warmup=False)
        with SessionBundle(path) as bundle:
            outputs.append(bundle.run("recommend", {"session_item_ids": sessions}))
    for out in outputs[1:]:
        np.testing.assert_array_equal(out["item_ids"], outputs[0]["item_ids"])
        np.testing.assert_array_equal(out["scores"], outputs[0]["scores"])
    assert (outputs[0]["scores"][:, 0] == outputs[0]["scores"][:, 1]).all()  # ties were there


@pytest.mark.parametrize("precision, dtype", [("bfloat16", tf.bfloat16), ("int8", tf.int8)])
def test_the_reduced_table_is_what_the_version_holds(exports, precision, dtype):
    """The option reaches the export: its checkpoint holds a table of that dtype, and the
    float32 export holds none."""
    _, bundles = exports

    def dtypes(name):
        reader = tf.train.load_checkpoint(
            os.path.join(bundles[name].path, "variables", "variables"))
        return set(reader.get_variable_to_dtype_map().values())

    assert dtype in dtypes(precision) and dtype not in dtypes("float32")
    with open(os.path.join(bundles[precision].path, "assets.extra", "tf_gru4rec.json")) as f:
        assert json.load(f)["score_precision"] == precision
