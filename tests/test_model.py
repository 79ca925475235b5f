"""GRU4Rec: state carried through fit, the sampled loss, training, saving, evaluation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_gru4rec.config import TrainConfig
from tf_gru4rec.data.input_pipeline import SessionParallelInput
from tf_gru4rec.evaluation import evaluate, naive_ranks
from tf_gru4rec.evaluation.metrics import target_ranks
from tf_gru4rec.nn.model import GRU4Rec
from tf_gru4rec.training import (
    build_model,
    load_model_dir,
    make_optimizer,
    save_model_dir,
    train,
)

SMALL = TrainConfig(layers=[16], batch_size=8, n_sample=10, learning_rate=0.1, momentum=0.1,
                    n_epochs=1, steps_per_execution=5, seed=1)


def replay_states(model, steps, n_steps):
    """Eager reference: run the GRU over the steps, zeroing slots at their reset flag."""
    states = [np.zeros((steps.inputs.shape[1], h), "float32") for h in model.layer_sizes]
    for t in range(n_steps):
        keep = 1.0 - steps.reset[t][:, None].astype("float32")
        _, states = model.step(steps.inputs[t], [s * keep for s in states])
    return [np.asarray(s) for s in states]


@pytest.mark.parametrize("mode", [{}, {"constrained_embedding": False, "embedding": 0},
                                  {"constrained_embedding": False, "embedding": 12}])
def test_fit_carries_state_exactly(synthetic_log, mode):
    log = synthetic_log[0]
    config = SMALL.replace(learning_rate=1e-12, layers=[6, 5], **mode)  # weights do not move
    model = build_model(config, log.n_items, log.item_support())
    source = SessionParallelInput(log, config.batch_size, n_sample=config.n_sample)
    steps = source.steps(0)
    n = 35  # a multiple of steps_per_execution
    model.fit(source.dataset().take(n), epochs=1, verbose=0, shuffle=False,
              callbacks=[source.callback()])
    for got, want in zip(model.train_states, replay_states(model, steps, n), strict=True):
        np.testing.assert_allclose(got.numpy(), want, atol=1e-5)


def numpy_sampled_xe(model, hidden, targets, valid, negatives):
    w = model.item_scores.item_weights.numpy()
    b = model.item_scores.item_bias.numpy()
    log_support = model.log_support.numpy()
    cols = np.concatenate([targets, negatives])
    scores = hidden @ w[cols].T + b[cols]
    log_q = np.concatenate([log_support[targets], model.sample_alpha * log_support[negatives]])
    scores = scores - model.logq * log_q
    out = []
    for i in range(len(targets)):
        keep = np.concatenate([valid, np.ones(len(negatives))]) > 0
        keep[i] = True  # the target itself is in the softmax once
        z = scores[i, keep]
        out.append(np.log(np.exp(z - z.max()).sum()) + z.max() - scores[i, i])
    return np.array(out)


def test_sampled_cross_entropy_with_logq_and_empty_slots(rng):
    model = build_model(SMALL.replace(logq=1.0, sample_alpha=0.5), 30,
                        rng.integers(1, 100, size=30))
    model.item_scores.item_bias.assign(rng.normal(size=30).astype("float32"))
    hidden = rng.normal(size=(8, 16)).astype("float32")
    targets = rng.integers(0, 30, size=8).astype("int32")
    negatives = rng.integers(0, 30, size=10).astype("int32")
    valid = np.array([1, 1, 1, 0, 1, 1, 0, 1], "float32")
    got = model.sampled_loss(hidden, targets, valid, negatives).numpy()
    want = numpy_sampled_xe(model, hidden, targets, valid, negatives)
    np.testing.assert_allclose(got[valid > 0], want[valid > 0], rtol=1e-4)


def test_item_table_gradients_are_row_sparse(synthetic_log):
    model = build_model(SMALL, 20)
    with tf.GradientTape() as tape:
        hidden, _ = model.step(tf.constant([1, 2]), model.gru.initial_states(2))
        loss = tf.reduce_sum(model.sampled_loss(hidden, tf.constant([3, 4]),
                                                tf.ones(2), tf.constant([5, 6, 7])))
    grad = tape.gradient(loss, model.item_scores.item_weights)
    assert isinstance(grad, tf.IndexedSlices)


def pop_recall_at_20(train_log, test_log):
    top = np.argsort(-train_log.item_support(), kind="stable")[:20]
    hits = total = 0
    for s in range(test_log.n_sessions):
        items = test_log.session(s)
        hits += np.isin(items[1:], top).sum()
        total += len(items) - 1
    return hits / total


@pytest.mark.parametrize("loss", ["cross-entropy", "bpr-max", "top1", "bpr", "top1-max"])
def test_training_learns_and_beats_popularity(synthetic_log, loss):
    log = synthetic_log[0]
    config = SMALL.replace(loss=loss, layers=[32], n_epochs=3, learning_rate=0.1,
                           elu_param=0.5 if loss == "bpr-max" else 0.0,
                           logq=1.0 if loss == "cross-entropy" else 0.0)
    result = train(config, log, verbose=0)
    losses = result.history["loss"]
    assert losses[-1] < losses[0]
    metrics = evaluate(result.model, log, cutoffs=(20,))
    assert metrics["test_events"] == log.n_predictions
    assert metrics["recall@20"] > 1.3 * pop_recall_at_20(log, log)


def test_evaluate_matches_naive_evaluator_with_ties(synthetic_log, rng):
    log = synthetic_log[0]
    model = build_model(SMALL.replace(layers=[4]), log.n_items)
    weights = model.item_scores.item_weights.numpy()
    weights[1::3] = weights[0::3][: len(weights[1::3])]  # many exact ties
    model.item_scores.item_weights.assign(weights)
    for mode in ("standard", "conservative", "median"):
        got = evaluate(model, log, cutoffs=(1, 5, 20), tie_mode=mode, batch_size=64)
        ranks = []
        for s in range(min(log.n_sessions, 150)):
            items = log.session(s)
            states = model.gru.initial_states(1)
            for t in range(len(items) - 1):
                hidden, states = model.step(items[t : t + 1], states)
                scores = model.score_all(hidden).numpy()[0]
                ranks.append(naive_ranks(scores, items[t + 1], mode))
        partial = evaluate(model, _first_sessions(log, 150), cutoffs=(1, 5, 20),
                           tie_mode=mode, batch_size=64)
        ranks = np.array(ranks)
        for k in (1, 5, 20):
            assert partial[f"recall@{k}"] == pytest.approx(np.mean(ranks <= k), abs=1e-9)
            assert partial[f"mrr@{k}"] == pytest.approx(np.mean((ranks <= k) / ranks), abs=1e-6)
        assert 0 < got["recall@20"] < 1


def _first_sessions(log, n):
    from tf_gru4rec.data.session_log import SessionLog

    end = log.offsets[n]
    return SessionLog(log.items[:end], log.offsets[: n + 1], log.session_ids[:n],
                      log.start_times[:n], log.n_items)


def test_target_ranks_tie_rules():
    scores = tf.constant([[0.5, 0.9, 0.5, 0.1]])
    target = tf.constant([0])
    assert target_ranks(scores, target, "standard").numpy()[0] == 2
    assert target_ranks(scores, target, "conservative").numpy()[0] == 3
    assert target_ranks(scores, target, "median").numpy()[0] == 2.5
    with pytest.raises(ValueError, match="tie_mode"):
        target_ranks(scores, target, "optimistic")


def test_save_and_load_give_the_same_scores(tmp_path, synthetic_log):
    log, vocab, _ = synthetic_log
    model = build_model(SMALL, log.n_items, log.item_support())
    ids = np.array([0, 5, 7], "int32")
    expected = model(ids).numpy()
    save_model_dir(str(tmp_path / "m"), model, vocab, SMALL)
    loaded = load_model_dir(str(tmp_path / "m"))
    np.testing.assert_allclose(loaded.model(ids).numpy(), expected, atol=1e-6)
    assert loaded.vocabulary == vocab and loaded.config == SMALL
    np.testing.assert_array_equal(loaded.model.log_support.numpy(), model.log_support.numpy())
    # Keras' own format round-trips too.
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    assert isinstance(reloaded, GRU4Rec)
    np.testing.assert_allclose(reloaded(ids).numpy(), expected, atol=1e-6)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="final_act"):
        GRU4Rec(10, final_act="relu")
    with pytest.raises(ValueError, match="loss"):
        GRU4Rec(10, loss="hinge")
    model = build_model(SMALL, 10)
    with pytest.raises(ValueError, match=r"shape \(10,\)"):
        model.set_item_support(np.ones(3))


def train_35_steps(log, config, step_compilation, blocks):
    """A model trained on the first 35 steps (5 blocks of 7, or 35 single steps)."""
    model = build_model(config, log.n_items, log.item_support())
    model.compile(optimizer=make_optimizer(config), step_compilation=step_compilation)
    source = SessionParallelInput(log, config.batch_size, n_sample=config.n_sample,
                                  steps_per_block=7)
    model.fit(source.dataset(blocks=blocks).take(5 if blocks else 35), epochs=1, verbose=0,
              shuffle=False, callbacks=[source.callback()])
    return model


def assert_same_weights(a, b, atol):
    for x, y in zip(a.weights, b.weights, strict=True):
        np.testing.assert_allclose(x.numpy(), y.numpy(), atol=atol, err_msg=x.path)


@pytest.mark.parametrize("step_compilation", [None, "full"])
def test_blocks_of_steps_train_exactly_like_single_steps(synthetic_log, step_compilation):
    log = synthetic_log[0]
    config = SMALL.replace(dropout_p_hidden=0.3)
    single, blocks = (train_35_steps(log, config, step_compilation, b) for b in (False, True))
    assert_same_weights(single, blocks, atol=1e-6)
    assert not np.allclose(single.item_scores.item_weights.numpy(),
                           build_model(config, log.n_items).item_scores.item_weights.numpy())


@pytest.mark.parametrize("n_sample", [10, 200])  # sparse and masked-dense row updates
def test_the_xla_block_trains_like_the_uncompiled_one(synthetic_log, n_sample):
    log = synthetic_log[0]
    config = SMALL.replace(dropout_p_hidden=0.3, n_sample=n_sample)
    plain, compiled = (train_35_steps(log, config, mode, blocks=True) for mode in (None, "full"))
    assert_same_weights(plain, compiled, atol=5e-5)  # XLA fuses differently: float32 noise


@pytest.mark.parametrize("loss, written", [("cross-entropy", "cross_entropy_over_columns"),
                                           ("bpr-max", "bpr_max_over_columns")])
def test_training_takes_the_written_gradients(synthetic_log, monkeypatch, loss, written):
    """The compiled block's step differentiates the reset-after cell and the loss through
    their written-out gradients (a faster form of the same maths), bpreg included."""
    from tf_gru4rec.nn import losses
    from tf_gru4rec.nn.layers import gru_stack

    calls = []
    for module, name in [(gru_stack, "_reset_after_gates_trained"), (losses, written)]:
        function = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=function, _n=name:
                            calls.append((_n, a[2:])) or _f(*a))
    train_35_steps(synthetic_log[0], SMALL.replace(loss=loss, bpreg=0.3), "full", blocks=True)
    assert sorted({name for name, _ in calls}) == sorted(["_reset_after_gates_trained", written])
    if loss == "bpr-max":
        assert {extra for name, extra in calls if name == written} == {(0.3,)}


@pytest.mark.parametrize(("n_sample", "items_major"), [(120, True), (10, False)])
def test_training_takes_the_items_major_product_with_many_columns_per_slot(
        synthetic_log, monkeypatch, n_sample, items_major):
    """With 8 slots and 128 columns (16 per slot) the compiled block scores the items
    items-major; with 18 columns it keeps the plain product."""
    from tf_gru4rec.nn.layers import item_scores

    calls = []
    written = item_scores._items_major_product
    monkeypatch.setattr(item_scores, "_items_major_product",
                        lambda *a: calls.append(a[1].shape) or written(*a))
    train_35_steps(synthetic_log[0], SMALL.replace(n_sample=n_sample), "full", blocks=True)
    assert set(calls) == ({(8 + n_sample, 16)} if items_major else set())


def test_items_major_training_gradients_equal_the_plain_ones(synthetic_log, monkeypatch):
    """One step's gradients of every weight, items-major against the plain product."""
    from tf_gru4rec.nn.layers import item_scores

    log = synthetic_log[0]
    config = SMALL.replace(n_sample=120)
    source = SessionParallelInput(log, config.batch_size, n_sample=config.n_sample,
                                  steps_per_block=7)
    block = next(iter(source.dataset(blocks=True)))
    step = {key: value[3] for key, value in block.items()}  # mostly slots that go on
    model = build_model(config, log.n_items, log.item_support())
    states = [np.random.default_rng(0).normal(size=(8, 16)).astype("float32")]
    grads = {}
    for items_major in (True, False):
        monkeypatch.setattr(item_scores, "items_major", lambda *_, _m=items_major: _m)
        grads[items_major], *_ = model.forward_backward(step, states)
    for variable, a, b in zip(model.trainable_variables, grads[True], grads[False], strict=True):
        a, b = tf.convert_to_tensor(a).numpy(), tf.convert_to_tensor(b).numpy()  # rows summed
        assert np.abs(a).max() > 0, variable.path
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=variable.path)


def test_compile_rejects_an_unknown_step_compilation():
    model = build_model(SMALL, 10)
    with pytest.raises(ValueError, match="step_compilation"):
        model.compile(optimizer="adam", step_compilation="xla")


@pytest.mark.parametrize(("step_compilation", "jit_compile", "static"), [
    ("full", False, True), (None, False, False), (None, True, True)])
def test_compile_picks_the_row_update_that_the_compilation_allows(step_compilation, jit_compile,
                                                                 static):
    model = build_model(SMALL, 10)
    optimizer = make_optimizer(SMALL)
    model.compile(optimizer=optimizer, step_compilation=step_compilation,
                  jit_compile=jit_compile)
    assert optimizer.static_shapes is static


def test_steps_per_execution_changes_only_which_negatives_are_drawn(synthetic_log):
    """The block size reaches training only through the negatives, drawn per block: without
    sampled negatives, blocks of 5 and 12 steps train the same weights (dropout included)."""
    log = synthetic_log[0]
    config = SMALL.replace(dropout_p_hidden=0.3, dropout_p_embed=0.1, n_epochs=2)

    def trained(**settings):
        model = train(config.replace(**settings), log, verbose=0).model
        return [v.numpy() for v in model.trainable_variables]

    five, twelve = (trained(n_sample=0, steps_per_execution=k) for k in (5, 12))
    for a, b in zip(five, twelve, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    five, twelve = (trained(steps_per_execution=k) for k in (5, 12))
    assert not all(np.allclose(a, b) for a, b in zip(five, twelve, strict=True))
