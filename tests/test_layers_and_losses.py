"""GRU stack, item scores and every loss against plain NumPy references."""

import keras
import numpy as np
import pytest

from tf_gru4rec import losses
from tf_gru4rec.layers import GRUStack, ItemScores


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def numpy_gru_step(x_proj, h, u_rz, u_c):
    """SPEC.md's equations; x_proj = x W + b holds the [r | z | candidate] input parts."""
    n = h.shape[1]
    r = sigmoid(x_proj[:, :n] + h @ u_rz[:, :n])
    z = sigmoid(x_proj[:, n:2 * n] + h @ u_rz[:, n:])
    c = np.tanh(x_proj[:, 2 * n:] + (r * h) @ u_c)
    return (1 - z) * h + z * c


def test_gru_stack_matches_numpy_over_several_steps(rng):
    stack = GRUStack([4, 3], seed=1)
    stack.build((None, 5))
    for w in stack.biases:
        w.assign(rng.normal(size=w.shape))  # non-zero biases are part of the check
    xs = rng.normal(size=(6, 2, 5)).astype("float32")
    states = [np.zeros((2, 4), "float32"), np.zeros((2, 3), "float32")]
    ref = [s.copy() for s in states]
    for x in xs:
        out, states = stack(x, states)
        inp = x
        for i in range(2):
            proj = inp @ stack.input_kernels[i].numpy() + stack.biases[i].numpy()
            ref[i] = numpy_gru_step(proj, ref[i], stack.recurrent_gates[i].numpy(),
                                    stack.recurrent_candidates[i].numpy())
            inp = ref[i]
        np.testing.assert_allclose(out, ref[1], atol=1e-5)
        np.testing.assert_allclose(states[0], ref[0], atol=1e-5)


def test_one_hot_input_equals_one_hot_times_matrix(rng):
    stack = GRUStack([3], one_hot_items=7, seed=2)
    stack.build((None,))
    ids = np.array([0, 6, 3])
    h = rng.normal(size=(3, 3)).astype("float32")
    out, _ = stack(ids, [h])
    one_hot = np.eye(7, dtype="float32")[ids]
    proj = one_hot @ stack.input_kernels[0].numpy() + stack.biases[0].numpy()
    expected = numpy_gru_step(proj, h, stack.recurrent_gates[0].numpy(),
                              stack.recurrent_candidates[0].numpy())
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_dropout_output_is_the_carried_state():
    stack = GRUStack([50], dropout=0.5, seed=3)
    stack.build((None, 4))
    out, states = stack(np.ones((2, 4), "float32"), [np.ones((2, 50), "float32")],
                        training=True)
    np.testing.assert_array_equal(out, states[0])
    assert (np.asarray(out) == 0).mean() > 0.2


def test_initialisation_range_and_config_round_trip():
    stack = GRUStack([10], seed=0)
    stack.build((None, 20))
    limit = np.sqrt(6.0 / (20 + 10))  # per gate block of [20, 10]
    assert np.abs(stack.input_kernels[0].numpy()).max() <= limit
    assert np.abs(stack.input_kernels[0].numpy()).max() > 0.8 * limit
    clone = GRUStack.from_config(stack.get_config())
    assert clone.units == [10] and clone.dropout == [0.0]


def test_item_scores_sampled_and_full(rng):
    layer = ItemScores(6, 3, seed=0)
    layer.build()
    layer.item_bias.assign(rng.normal(size=6))
    h = rng.normal(size=(2, 3)).astype("float32")
    w, b = layer.item_weights.numpy(), layer.item_bias.numpy()
    np.testing.assert_allclose(layer(h), h @ w.T + b, atol=1e-5)
    cols = np.array([5, 0, 5])
    np.testing.assert_allclose(layer.sampled(h, cols), h @ w[cols].T + b[cols], atol=1e-5)


# ----------------------------------------------------------------- losses
def reference(name, pos, neg, mask, bpreg=0.0):
    """Row-by-row NumPy versions of SPEC.md's formulas over the real negatives only."""
    out = []
    for p, row, m in zip(pos, neg, mask, strict=True):
        r = row[m > 0]
        if name == "cross-entropy":
            z = np.concatenate([[p], r])
            out.append(-(p - np.log(np.exp(z - z.max()).sum()) - z.max()))
        elif name == "bpr":
            out.append(-np.mean(np.log(sigmoid(p - r))))
        elif name == "top1":
            out.append(np.mean(sigmoid(r - p) + sigmoid(r ** 2)))
        else:
            s = np.exp(r - r.max()) / np.exp(r - r.max()).sum()
            if name == "top1-max":
                out.append(np.sum(s * (sigmoid(r - p) + sigmoid(r ** 2))))
            else:
                out.append(-np.log(np.sum(s * sigmoid(p - r)) + 1e-24)
                           + bpreg * np.sum(s * r ** 2))
    return np.array(out)


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_losses_match_numpy(name, rng):
    for _ in range(3):
        pos = rng.normal(size=5).astype("float32") * 2
        neg = rng.normal(size=(5, 9)).astype("float32") * 2
        mask = (rng.random((5, 9)) > 0.3).astype("float32")
        mask[:, 0] = 1.0
        kwargs = {"bpreg": 0.7} if name == "bpr-max" else {}
        got = keras.ops.convert_to_numpy(losses.get(name)(pos, neg, mask, **kwargs))
        np.testing.assert_allclose(got, reference(name, pos, neg, mask, 0.7), rtol=1e-4,
                                   atol=1e-5)


def test_cross_entropy_over_columns_equals_the_masked_cross_entropy(rng):
    scores = rng.normal(size=(5, 12)).astype("float32") * 3
    column_valid = np.ones(12, "float32")
    column_valid[[1, 3]] = 0.0  # empty slots: rows 1 and 3 and their target columns
    mask = column_valid[None, :] * (1.0 - np.eye(5, 12, dtype="float32"))
    got = keras.ops.convert_to_numpy(losses.cross_entropy_over_columns(scores, column_valid))
    expected = reference("cross-entropy", np.diag(scores[:, :5]), scores, mask)
    valid_rows = column_valid[:5] > 0
    np.testing.assert_allclose(got[valid_rows], expected[valid_rows], rtol=1e-5, atol=1e-5)


def test_masked_columns_do_not_matter(rng):
    pos = rng.normal(size=3).astype("float32")
    neg = rng.normal(size=(3, 4)).astype("float32")
    mask = np.array([[1, 1, 0, 0]] * 3, "float32")
    changed = neg.copy()
    changed[:, 2:] = 1e4
    for fn in losses.LOSSES.values():
        np.testing.assert_allclose(fn(pos, neg, mask), fn(pos, changed, mask), rtol=1e-6)


def test_unknown_loss_is_named():
    with pytest.raises(ValueError, match="hinge"):
        losses.get("hinge")


def test_hash_dropout_rate_scale_and_identity():
    from tf_gru4rec.layers import HashDropout

    layer = HashDropout(0.3, seed=1)
    x = np.ones((200, 100), "float32")
    np.testing.assert_array_equal(layer(x, training=False), x)
    out = np.asarray(layer(x, training=True))
    assert abs((out == 0).mean() - 0.3) < 0.02
    np.testing.assert_allclose(out[out > 0], 1 / 0.7, rtol=1e-6)
    assert not np.array_equal(out, np.asarray(layer(x, training=True)))  # a new mask each call
    with pytest.raises(ValueError, match="rate"):
        HashDropout(1.0)


def test_hash_uniform_is_uniform_independent_and_the_same_under_xla():
    import tensorflow as tf

    from tf_gru4rec.layers.dropout import hash32, hash_uniform

    # lowbias32 reference values, computed by hand with Python integers.
    def reference(x):
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    xs = np.array([0, 1, 2, 12345, 2**31, 2**32 - 1], dtype=np.uint32)
    np.testing.assert_array_equal(hash32(tf.constant(xs)).numpy(),
                                  [reference(int(x)) for x in xs])
    draws = [hash_uniform((400, 250), tf.constant([7, step])).numpy() for step in range(3)]
    for u in draws:
        assert 0.0 <= u.min() and u.max() < 1.0
        counts = np.histogram(u, bins=20, range=(0, 1))[0]
        expected = u.size / 20
        assert ((counts - expected) ** 2 / expected).sum() < 60  # chi2(19): p ~ 1e-6
        assert abs(np.corrcoef(u[:, :-1].ravel(), u[:, 1:].ravel())[0, 1]) < 0.01
    # Consecutive step counters give unrelated masks.
    assert abs(np.corrcoef(draws[0].ravel(), draws[1].ravel())[0, 1]) < 0.01
    compiled = tf.function(hash_uniform, jit_compile=True)((400, 250), tf.constant([7, 1]))
    np.testing.assert_array_equal(compiled.numpy(), draws[1])


@pytest.mark.parametrize("mode", [{}, {"constrained_embedding": False, "embedding": 40},
                                  {"constrained_embedding": False, "embedding": 0}])
def test_no_two_weights_share_a_random_stream(mode):
    """With a fixed seed every initialiser draws its own numbers: no weight is another one's
    numbers (or a prefix of them) rescaled, as when all initialisers share one stream."""
    from tf_gru4rec.config import TrainConfig
    from tf_gru4rec.training import build_model

    config = TrainConfig(layers=[32, 32], batch_size=4, seed=0, **mode)
    model = build_model(config, 200)
    matrices = {w.path: w.numpy().ravel() for w in model.trainable_weights if len(w.shape) == 2}
    assert len(matrices) == 7 + ("embedding" in str(list(matrices)))
    names = sorted(matrices)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            n = min(len(matrices[a]), len(matrices[b]))  # >= 1024
            corr = np.corrcoef(matrices[a][:n], matrices[b][:n])[0, 1]
            assert abs(corr) < 0.15, (a, b, corr)
            ratio = np.abs(matrices[a][:n]) / np.maximum(np.abs(matrices[b][:n]), 1e-12)
            assert np.std(ratio) > 1e-3, (a, b)  # not identical up to scale


def test_gru_stack_takes_one_dropout_rate_per_layer():
    stack = GRUStack([64, 64], dropout=[0.1, 0.6], seed=3)
    stack.build((None, 4))
    out, states = stack(np.ones((64, 4), "float32"), stack.initial_states(64), training=True)
    assert abs((np.asarray(states[0]) == 0).mean() - 0.1) < 0.03
    assert abs((np.asarray(out) == 0).mean() - 0.6) < 0.03
    assert GRUStack.from_config(stack.get_config()).dropout == [0.1, 0.6]
    with pytest.raises(ValueError, match="one such rate per layer"):
        GRUStack([4, 4], dropout=[0.1])
