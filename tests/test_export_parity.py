"""Every signature of a fresh export, loaded the way TensorFlow Serving loads it (the
session-based loader, and `saved_model_cli run`), gives the Keras model's values: for each
embedding mode, both GRU cell forms, with dropout in training, one and two GRU layers, with
and without exclude_seen."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tf_gru4rec.config import TrainConfig
from tf_gru4rec.data.vocabulary import ItemVocabulary
from tf_gru4rec.evaluation.metrics import target_ranks
from tf_gru4rec.serving.bundle import SessionBundle
from tf_gru4rec.serving.export import export_model
from tf_gru4rec.training import build_model

N_ITEMS, K = 30, 6
RAW_IDS = np.asarray([f"item-{i * 13 % 97}" for i in range(N_ITEMS)], dtype=object)
SUPPORT = np.random.default_rng(1).permutation(N_ITEMS) + 1

VARIANTS = {
    # name: (TrainConfig overrides, exclude_seen)
    "one-hot-2-layers": (dict(layers=[9, 7], constrained_embedding=False, embedding=0,
                              dropout_p_hidden=0.5), False),
    # The paper's reset-before cell; the other variants take the port's GRUCell (one-hot:
    # a reset-before first layer, then a GRUCell).
    "separate-embedding-reset-before-exclude-seen": (
        dict(layers=[8], constrained_embedding=False, embedding=5, dropout_p_embed=0.3,
             dropout_p_hidden=0.2, gru_cell="reset-before"), True),
    "constrained-2-layers-exclude-seen": (dict(layers=[6, 8], constrained_embedding=True,
                                               dropout_p_embed=0.25, dropout_p_hidden=0.4), True),
}


def ids(indices) -> np.ndarray:
    return RAW_IDS[np.asarray(indices)]


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def exported(request, tmp_path_factory):
    overrides, exclude_seen = VARIANTS[request.param]
    config = TrainConfig(batch_size=4, n_sample=0, jit_compile=False, seed=3, **overrides)
    model = build_model(config, N_ITEMS, item_support=SUPPORT)
    rng = np.random.default_rng(11)
    for variable in model.weights:  # every weight, biases too, matters for the scores
        if variable.trainable:
            variable.assign(rng.normal(0.0, 0.5, variable.shape).astype(np.float32))
    path = export_model(model, ItemVocabulary(RAW_IDS),
                        str(tmp_path_factory.mktemp(request.param) / "gru4rec"), k=K,
                        exclude_seen=exclude_seen, max_seen=10)
    bundle = SessionBundle(path)  # TF Serving's loader; warmup replayed as TF Serving does
    assert bundle.warmup() == 8  # every signature once
    yield model, bundle, exclude_seen, path
    bundle.close()


def run(bundle, signature, **inputs):
    return bundle.run(signature, bundle.check_inputs(signature, inputs))


def keras_step_scores(model, sessions):
    """Scores [B, n_items] after each click of equally long sessions [B, T] (inference)."""
    states = [tf.zeros((len(sessions), h)) for h in model.layer_sizes]
    out = []
    for t in range(sessions.shape[1]):
        hidden, states = model.step(tf.constant(sessions[:, t], tf.int32), states, training=False)
        out.append(model.score_all(hidden).numpy())
    return out, np.concatenate([s.numpy() for s in states], axis=1)


def expected_top_k(scores, seen_rows):
    scores = scores.copy()
    for row, seen in enumerate(seen_rows):
        scores[row, list(seen)] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    return top, np.take_along_axis(scores, top, axis=1)


def test_every_signature_matches_keras_on_values(exported):
    model, bundle, exclude_seen, _ = exported
    rng = np.random.default_rng(5)
    sessions = rng.integers(0, N_ITEMS, size=(4, 5))
    sids = np.asarray([f"parity-{i}" for i in range(4)], dtype=object)
    state = np.zeros((4, sum(model.layer_sizes)), np.float32)
    per_step, final_state = keras_step_scores(model, sessions)
    for t, scores in enumerate(per_step):
        seen = [set(s[: t + 1]) if exclude_seen else set() for s in sessions]
        top, top_scores = expected_top_k(scores, seen)
        items = ids(sessions[:, t])
        outputs = {
            "serving_default": run(bundle, "serving_default", session_id=sids, item_id=items),
            "click": run(bundle, "click", session_id=np.asarray([f"c-{i}" for i in range(4)],
                                                                dtype=object),
                         item_id=items, position=np.full(4, t, np.int64)),
            "recommend": run(bundle, "recommend", session_item_ids=ids(sessions[:, : t + 1])),
        }
        step_inputs = {"item_id": items, "state": state}
        if exclude_seen:
            step_inputs["seen_item_ids"] = np.concatenate(
                [np.full((4, 1), "", dtype=object), ids(sessions[:, :t])], axis=1)
        outputs["step"] = run(bundle, "step", **step_inputs)
        state = outputs["step"]["state"]
        for name, out in outputs.items():
            np.testing.assert_array_equal(out["item_ids"].astype(str), ids(top).astype(str),
                                          err_msg=name)
            np.testing.assert_allclose(out["scores"], top_scores, atol=1e-5, rtol=1e-5,
                                       err_msg=name)
            assert out["known"].tolist() == [True] * 4, name
        assert outputs["click"]["applied"].tolist() == [True] * 4
    np.testing.assert_allclose(state, final_state, atol=1e-5, rtol=1e-5)


def test_rank_and_lookup_match_keras(exported):
    model, bundle, _, _ = exported
    sessions = np.asarray([[1, 2, 3], [4, 4, 5], [29, 0, 7]])
    targets = np.asarray([9, 4, 29])
    sids = np.asarray([f"rank-{i}" for i in range(3)], dtype=object)
    for t in range(sessions.shape[1]):
        target = targets if t == sessions.shape[1] - 1 else sessions[:, t]
        out = run(bundle, "rank", session_id=sids, item_id=ids(sessions[:, t]),
                  target_item_id=ids(target))
    scores = tf.constant(keras_step_scores(model, sessions)[0][-1])
    for mode, ties in (("standard", 0.0), ("conservative", 1.0), ("median", 0.5)):
        expected = target_ranks(scores, tf.constant(targets, tf.int32), mode).numpy()
        np.testing.assert_array_equal(out["n_higher"] + 1 + ties * out["n_ties"], expected)
    known = run(bundle, "lookup", item_id=np.asarray([RAW_IDS[3], "item-x", ""], dtype=object))
    assert known["known"].tolist() == [True, False, False]


def count(bundle) -> int:
    return int(run(bundle, "session_count", probe=np.zeros(1, np.int32))["count"][0])


def test_end_session_and_session_count(exported):
    _, bundle, _, _ = exported
    before = count(bundle)
    run(bundle, "serving_default", session_id=np.asarray(["count-a", "count-b"], dtype=object),
        item_id=ids([1, 2]))
    assert count(bundle) == before + 2
    out = run(bundle, "end_session", session_id=np.asarray(["count-a", "nope"], dtype=object))
    assert out["ended"].tolist() == [True, False]
    assert count(bundle) == before + 1


def _saved_model_cli(args, env):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    command = [cli] if os.path.exists(cli) else [
        sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    return subprocess.run(command + args, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow  # default suite time (README: Tests); the C API loader tests stay
@pytest.mark.parametrize("exported", ["constrained-2-layers-exclude-seen"], indirect=True)
def test_saved_model_cli_runs_a_fresh_export(exported, tmp_path):
    """`saved_model_cli run` (it ships with TensorFlow and loads with the session-based loader,
    as TF Serving does) on `recommend` and `step`, compared with the Keras model. One variant,
    the one with most parts: the tests above check all three on that same loader."""
    model, _, exclude_seen, path = exported
    sessions = np.asarray([[3, 4, 5], [7, 7, 1]])
    per_step, final_state = keras_step_scores(model, sessions)
    top, top_scores = expected_top_k(
        per_step[-1], [set(s) if exclude_seen else set() for s in sessions])
    np.save(tmp_path / "sessions.npy", ids(sessions).astype("S"))  # bytes: no pickle needed
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = _saved_model_cli(["run", "--dir", path, "--tag_set", "serve", "--signature_def",
                             "recommend", "--inputs",
                             f"session_item_ids={tmp_path / 'sessions.npy'}",
                             "--outdir", str(tmp_path / "out")], env)
    assert done.returncode == 0, done.stderr[-2000:]
    got_ids = np.load(tmp_path / "out" / "item_ids.npy", allow_pickle=True)
    got_scores = np.load(tmp_path / "out" / "scores.npy")
    np.testing.assert_array_equal(got_ids.astype(str), ids(top).astype(str))
    np.testing.assert_allclose(got_scores, top_scores, atol=1e-5, rtol=1e-5)
    # The stateless step: a float state input beside the strings.
    np.save(tmp_path / "item.npy", ids([3]).astype("S"))
    np.save(tmp_path / "state.npy", np.zeros((1, sum(model.layer_sizes)), np.float32))
    feeds = [f"item_id={tmp_path / 'item.npy'}", f"state={tmp_path / 'state.npy'}"]
    if exclude_seen:
        np.save(tmp_path / "seen.npy", np.asarray([[b""]]))
        feeds.append(f"seen_item_ids={tmp_path / 'seen.npy'}")
    done = _saved_model_cli(["run", "--dir", path, "--tag_set", "serve", "--signature_def",
                             "step", "--inputs", ";".join(feeds),
                             "--outdir", str(tmp_path / "step")], env)
    assert done.returncode == 0, done.stderr[-2000:]
    expected, state_after = keras_step_scores(model, np.asarray([[3]]))
    step_scores = np.load(tmp_path / "step" / "scores.npy")
    top1, top1_scores = expected_top_k(expected[0], [{3} if exclude_seen else set()])
    np.testing.assert_allclose(step_scores, top1_scores, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "step" / "state.npy"), state_after,
                               atol=1e-5, rtol=1e-5)
