"""GRU stack, item scores and every loss against plain NumPy references."""

import keras
import numpy as np
import pytest

from tf_gru4rec.nn import losses
from tf_gru4rec.nn.layers import GRUStack, ItemScores


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def numpy_gru_step(x_proj, h, u_rz, u_c):
    """Reset-before (the 2016 paper); x_proj = x W + b holds the [r | z | candidate] parts."""
    n = h.shape[1]
    r = sigmoid(x_proj[:, :n] + h @ u_rz[:, :n])
    z = sigmoid(x_proj[:, n:2 * n] + h @ u_rz[:, n:])
    c = np.tanh(x_proj[:, 2 * n:] + (r * h) @ u_c)
    return (1 - z) * h + z * c


def numpy_gru_cell_step(x_proj, h, u, b_h):
    """torch.nn.GRUCell (reset-after): x_proj = x W_ih + b_ih, u = W_hh^T, b_h = b_hh."""
    n = h.shape[1]
    hidden = h @ u + b_h
    r = sigmoid(x_proj[:, :n] + hidden[:, :n])
    z = sigmoid(x_proj[:, n:2 * n] + hidden[:, n:2 * n])
    c = np.tanh(x_proj[:, 2 * n:] + r * hidden[:, 2 * n:])
    return (1 - z) * c + z * h


def numpy_layer_step(stack, i, x_proj, h):
    """Layer i of `stack` in NumPy, in the form the stack gives it."""
    w = {k: v.numpy() for k, v in stack.layer_weights(i).items()}
    if stack.reset_after(i):
        return numpy_gru_cell_step(x_proj, h, w["U"], w["b_h"])
    return numpy_gru_step(x_proj, h, w["U_rz"], w["U_c"])


def randomise_biases(stack, rng):
    for w in stack.biases + stack.recurrent_biases:
        w.assign(rng.normal(size=w.shape))  # non-zero biases are part of the check


@pytest.mark.parametrize("cell", ["reset-after", "reset-before"])
def test_gru_stack_matches_numpy_over_several_steps(rng, cell):
    stack = GRUStack([4, 3], cell=cell, seed=1)
    stack.build((None, 5))
    assert [stack.reset_after(i) for i in range(2)] == [cell == "reset-after"] * 2
    randomise_biases(stack, rng)
    xs = rng.normal(size=(6, 2, 5)).astype("float32")
    states = [np.zeros((2, 4), "float32"), np.zeros((2, 3), "float32")]
    ref = [s.copy() for s in states]
    for x in xs:
        out, states = stack(x, states)
        inp = x
        for i in range(2):
            proj = inp @ stack.input_kernels[i].numpy() + stack.biases[i].numpy()
            ref[i] = numpy_layer_step(stack, i, proj, ref[i])
            inp = ref[i]
        np.testing.assert_allclose(out, ref[1], atol=1e-5)
        np.testing.assert_allclose(states[0], ref[0], atol=1e-5)


def test_the_two_forms_differ_and_the_candidate_bias_acts(rng):
    """Same weights, other form: other outputs; and b_hn (inside r * (.)) reaches the output."""
    x = rng.normal(size=(2, 5)).astype("float32")
    h = rng.uniform(-0.9, 0.9, size=(2, 4)).astype("float32")
    after = GRUStack([4], cell="reset-after", seed=1)
    after.build((None, 5))
    before = GRUStack([4], cell="reset-before", seed=1)
    before.build((None, 5))
    u = after.recurrent_kernels[0].numpy()
    before.input_kernels[0].assign(after.input_kernels[0].numpy())
    before.recurrent_gates[0].assign(u[:, :8])
    before.recurrent_candidates[0].assign(u[:, 8:])
    out_after, _ = after(x, [h])
    out_before, _ = before(x, [h])
    assert np.abs(np.asarray(out_after) - np.asarray(out_before)).max() > 1e-3
    b_h = np.zeros(12, "float32")
    b_h[8:] = 1.0  # only b_hn
    after.recurrent_biases[0].assign(b_h)
    out_bias, _ = after(x, [h])
    assert np.abs(np.asarray(out_bias) - np.asarray(out_after)).max() > 1e-3


@pytest.mark.parametrize("cell", ["reset-after", "reset-before"])
def test_one_hot_first_layer_is_reset_before_and_equals_one_hot_times_matrix(rng, cell):
    """The port's GRUEmbedding: the one-hot first layer is reset-before in both forms; a
    second layer takes the stack's form (torch.nn.GRUCell in the port)."""
    stack = GRUStack([3, 2], one_hot_items=7, cell=cell, seed=2)
    stack.build((None,))
    assert not stack.reset_after(0) and stack.reset_after(1) == (cell == "reset-after")
    randomise_biases(stack, rng)
    ids = np.array([0, 6, 3])
    h = [rng.normal(size=(3, 3)).astype("float32"), rng.normal(size=(3, 2)).astype("float32")]
    out, states = stack(ids, h)
    one_hot = np.eye(7, dtype="float32")[ids]
    proj = one_hot @ stack.input_kernels[0].numpy() + stack.biases[0].numpy()
    first = numpy_layer_step(stack, 0, proj, h[0])
    np.testing.assert_allclose(states[0], first, atol=1e-5)
    proj = first @ stack.input_kernels[1].numpy() + stack.biases[1].numpy()
    np.testing.assert_allclose(out, numpy_layer_step(stack, 1, proj, h[1]), atol=1e-5)


def numpy_gru_cell_gradient(projected, hidden, state, upstream):
    """dL/d(projected, hidden, state) of `numpy_gru_cell_step` after its products, in float64
    and by hand (state's path through `hidden` excluded), for dL/dh' = upstream."""
    projected, hidden, state, g = (a.astype("float64") for a in (projected, hidden, state,
                                                                    upstream))
    n = state.shape[1]
    r = sigmoid(projected[:, :n] + hidden[:, :n])
    z = sigmoid(projected[:, n:2 * n] + hidden[:, n:2 * n])
    c = np.tanh(projected[:, 2 * n:] + r * hidden[:, 2 * n:])
    d_c = g * (1 - z) * (1 - c ** 2)
    d_z = g * (state - c) * z * (1 - z)
    d_r = d_c * hidden[:, 2 * n:] * r * (1 - r)
    return (np.concatenate([d_r, d_z, d_c], 1), np.concatenate([d_r, d_z, d_c * r], 1),
            g * z)


def test_the_reset_after_cell_s_written_gradient_matches_numpy_and_the_traced_one(rng):
    import tensorflow as tf

    from tf_gru4rec.nn.layers import gru_stack

    projected = tf.constant(rng.normal(size=(5, 12)).astype("float32"))
    hidden = tf.constant(rng.normal(size=(5, 12)).astype("float32"))
    state = tf.constant(rng.normal(size=(5, 4)).astype("float32") * 3)  # carried states grow
    upstream = tf.constant(rng.normal(size=(5, 4)).astype("float32"))
    grads = {}
    for name, cell in [("written", gru_stack._reset_after_gates_trained),
                       ("traced", lambda p, q, s: gru_stack._reset_after_gates(p, q, s, 4)[0])]:
        with tf.GradientTape() as tape:
            tape.watch([projected, hidden, state])
            out = cell(projected, hidden, state)
        grads[name] = tape.gradient(out, [projected, hidden, state], output_gradients=upstream)
        np.testing.assert_allclose(out, numpy_gru_cell_step(
            projected.numpy(), state.numpy(), np.zeros((4, 12), "float32"), hidden.numpy()),
            atol=1e-5)  # u = 0: hidden enters as the bias b_h
    want = numpy_gru_cell_gradient(projected.numpy(), hidden.numpy(), state.numpy(),
                                   upstream.numpy())
    for got_written, got_traced, expected in zip(grads["written"], grads["traced"], want,
                                                 strict=True):
        np.testing.assert_allclose(got_written, expected, atol=1e-5)
        np.testing.assert_allclose(got_traced, expected, atol=1e-5)


@pytest.mark.parametrize("layers", [[4], [4, 3]])
def test_training_gradients_of_the_stack_equal_the_traced_ones(rng, layers, monkeypatch):
    """Training takes the written gradient (and only training), and it gives the same weight
    gradients through a whole stack as the traced one."""
    import tensorflow as tf

    from tf_gru4rec.nn.layers import gru_stack

    calls = []
    written = gru_stack._reset_after_gates_trained
    monkeypatch.setattr(gru_stack, "_reset_after_gates_trained",
                        lambda *args: calls.append(1) or written(*args))
    stack = GRUStack(layers, seed=4)
    stack.build((None, 5))
    randomise_biases(stack, rng)
    x = rng.normal(size=(3, 5)).astype("float32")
    states = [rng.normal(size=(3, h)).astype("float32") for h in layers]
    weights = rng.normal(size=(3, layers[-1])).astype("float32")
    grads = {}
    for training in (True, False):
        with tf.GradientTape() as tape:
            out, new_states = stack(x, states, training=training)
            loss = tf.reduce_sum(out * weights) + tf.reduce_sum(new_states[0] ** 2)
        grads[training] = tape.gradient(loss, stack.trainable_variables)
        assert len(calls) == (len(layers) if training else 0)
        calls.clear()
    for written, traced in zip(grads[True], grads[False], strict=True):
        np.testing.assert_allclose(written, traced, rtol=1e-5, atol=1e-6)


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
    recurrent_limit = np.sqrt(6.0 / (10 + 10))  # per gate block of [10, 30]
    assert np.abs(stack.recurrent_kernels[0].numpy()).max() <= recurrent_limit
    clone = GRUStack.from_config(stack.get_config())
    assert clone.units == [10] and clone.dropout == [0.0] and clone.cell == "reset-after"
    before = GRUStack.from_config(GRUStack([10], cell="reset-before").get_config())
    assert before.cell == "reset-before"
    # A stack saved before the option existed was reset-before.
    legacy = {k: v for k, v in stack.get_config().items() if k != "cell"}
    assert GRUStack.from_config(legacy).cell == "reset-before"
    with pytest.raises(ValueError, match="`cell` should be one of"):
        GRUStack([10], cell="reset-middle")


def test_item_scores_sampled_and_full(rng):
    layer = ItemScores(6, 3, seed=0)
    layer.build()
    layer.item_bias.assign(rng.normal(size=6))
    h = rng.normal(size=(2, 3)).astype("float32")
    w, b = layer.item_weights.numpy(), layer.item_bias.numpy()
    np.testing.assert_allclose(layer(h), h @ w.T + b, atol=1e-5)
    cols = np.array([5, 0, 5])
    np.testing.assert_allclose(layer.sampled(h, cols), h @ w[cols].T + b[cols], atol=1e-5)


@pytest.mark.parametrize(("slots", "columns", "expected"), [
    (32, 2080, True), (32, 544, True), (16, 2064, True), (32, 512, True), (32, 511, False),
    (32, 288, False), (33, 4000, False), (64, 2112, False), (500, 500, False),
    (None, 2080, False), (32, None, False)])
def test_items_major_products_only_for_few_slots_and_many_columns(slots, columns, expected):
    from tf_gru4rec.nn.layers import item_scores

    assert item_scores.items_major(slots, columns) is expected


@pytest.mark.parametrize("compiled", [False, True])
def test_items_major_product_matches_numpy_and_the_plain_product(rng, compiled):
    """Scores and both gradients of the items-major form against NumPy (float64) and against
    TensorFlow's traced gradient of the plain product, eagerly and under XLA."""
    import tensorflow as tf

    from tf_gru4rec.nn.layers import item_scores

    h = rng.normal(size=(4, 3)).astype("float32")
    rows = rng.normal(size=(70, 3)).astype("float32")  # 70 >= 16 x 4: items-major
    upstream = rng.normal(size=(4, 70)).astype("float32")
    assert item_scores.items_major(4, 70)

    def scores_and_gradients(product):
        def run(h, rows):
            with tf.GradientTape() as tape:
                tape.watch([h, rows])
                scores = product(h, rows)
            return (scores, *tape.gradient(scores, [h, rows], output_gradients=upstream))
        run = tf.function(run, jit_compile=True) if compiled else run
        return [x.numpy() for x in run(tf.constant(h), tf.constant(rows))]

    written = scores_and_gradients(item_scores.sampled_product)
    plain = scores_and_gradients(lambda h, rows: tf.matmul(h, rows, transpose_b=True))
    h64, rows64, up64 = (x.astype("float64") for x in (h, rows, upstream))
    expected = [h64 @ rows64.T, up64 @ rows64, up64.T @ h64]
    for got, traced, want in zip(written, plain, expected, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got, traced, rtol=1e-5, atol=1e-6)


def test_sampled_scores_take_the_items_major_product_by_shape(rng, monkeypatch):
    from tf_gru4rec.nn.layers import item_scores

    calls = []
    written = item_scores._items_major_product
    monkeypatch.setattr(item_scores, "_items_major_product",
                        lambda *a: calls.append(a[1].shape) or written(*a))
    layer = ItemScores(40, 3, seed=0)
    layer.build()
    layer.item_bias.assign(rng.normal(size=40))
    w, b = layer.item_weights.numpy(), layer.item_bias.numpy()
    h = rng.normal(size=(2, 3)).astype("float32")
    for n_columns, items_major in ((31, False), (32, True)):  # 16 columns per slot
        cols = rng.integers(0, 40, size=n_columns)
        np.testing.assert_allclose(layer.sampled(h, cols), h @ w[cols].T + b[cols], atol=1e-5)
        assert calls == ([(n_columns, 3)] if items_major else [])
        calls.clear()


# ----------------------------------------------------------------- losses
def reference(name, pos, neg, mask, bpreg=0.0):
    """Row-by-row NumPy versions of SPEC.md's formulas over the real negatives only."""
    out = []
    for p, row, m in zip(pos, neg, mask, strict=True):
        r = row[m > 0]
        if name == "cross-entropy":  # the PyTorch port's -log(softmax_target + 1e-24)
            z = np.concatenate([[p], r]).astype("float64")
            out.append(-np.log(np.exp(z[0] - z.max()) / np.exp(z - z.max()).sum() + 1e-24))
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


def test_cross_entropy_over_columns_gradient_matches_numpy_with_masked_columns(rng):
    """The written-out gradient, dL_i/dr_ij = w_i (s_ij - [j == i]) with w_i = p_i /
    (p_i + 1e-24), against NumPy (float64) on valid rows and against the traced gradient of
    the masked form on every row (empty slots included), for random upstream gradients."""
    import tensorflow as tf

    batch, columns = 6, 15
    for _ in range(3):
        scores = rng.normal(size=(batch, columns)).astype("float32") * 3
        scores[1, 1] = 20.0  # an empty slot's target above its row: the clamp acts
        scores = tf.constant(scores)
        column_valid = np.ones(columns, "float32")
        column_valid[[1, 4]] = 0.0  # empty slots: rows 1 and 4 and their target columns
        upstream = tf.constant(rng.normal(size=batch).astype("float32"))
        with tf.GradientTape() as tape:
            tape.watch(scores)
            loss = losses.cross_entropy_over_columns(scores, tf.constant(column_valid))
        grad = tape.gradient(loss, scores, output_gradients=upstream).numpy()
        with tf.GradientTape() as tape:  # the traced form it replaces
            tape.watch(scores)
            x = tf.where(column_valid[None, :] > 0, scores, -1e30)
            traced = -losses._log_softmax_target(x, tf.linalg.diag_part(scores[:, :batch]),
                                                 column_valid[None, :])
        traced_grad = tape.gradient(traced, scores, output_gradients=upstream).numpy()
        np.testing.assert_allclose(loss, traced, rtol=1e-6)
        np.testing.assert_allclose(grad, traced_grad, atol=1e-6)
        x = np.where(column_valid > 0, scores.numpy().astype("float64"), -np.inf)
        s = np.exp(x - x.max(axis=1, keepdims=True))
        s /= s.sum(axis=1, keepdims=True)
        p = np.diag(s[:, :batch])
        want = (upstream.numpy() * p / (p + 1e-24))[:, None] * (s - np.eye(batch, columns))
        rows = column_valid[:batch] > 0
        np.testing.assert_allclose(grad[rows], want[rows], atol=1e-6)
        assert not grad[:, column_valid == 0][rows].any()  # masked columns get nothing


def numpy_bpr_max_and_gradient(scores, column_valid, bpreg):
    """BPR-max over the column form (row i's target in column i, its negatives the other
    valid columns) and its gradient by hand, in float64: per row and as [B, C]."""
    scores = scores.astype("float64")
    batch, columns = scores.shape[0], scores.shape[1]
    mask = column_valid[None, :] * (1.0 - np.eye(batch, columns)) > 0
    losses_, grads = [], np.zeros_like(scores)
    for i in range(batch):
        r, p = scores[i], scores[i, i]
        e = np.where(mask[i], np.exp(r - r[mask[i]].max()), 0.0)
        s = e / e.sum()
        sigma = sigmoid(p - r)
        ranking, regulariser = np.sum(s * sigma), np.sum(s * r ** 2)
        losses_.append(-np.log(ranking + 1e-24) + bpreg * regulariser)
        grads[i] = s * (bpreg * (r ** 2 - regulariser + 2 * r)
                        - (sigma ** 2 - ranking) / (ranking + 1e-24))
        grads[i, i] += -np.sum(s * sigma * (1 - sigma)) / (ranking + 1e-24)
    return np.array(losses_), grads


def test_bpr_max_over_columns_matches_numpy_and_the_traced_gradient(rng):
    import tensorflow as tf

    batch, columns = 6, 15
    for _ in range(3):
        scores = tf.constant(rng.normal(size=(batch, columns)).astype("float32") * 2)
        column_valid = np.ones(columns, "float32")
        column_valid[[1, 4]] = 0.0  # empty slots: rows 1 and 4 and their target columns
        upstream = rng.normal(size=batch).astype("float32")
        with tf.GradientTape() as tape:
            tape.watch(scores)
            loss = losses.bpr_max_over_columns(scores, tf.constant(column_valid), 0.7)
        grad = tape.gradient(loss, scores, output_gradients=upstream).numpy()
        with tf.GradientTape() as tape:  # the traced form it replaces
            tape.watch(scores)
            mask = column_valid[None, :] * (1.0 - np.eye(batch, columns, dtype="float32"))
            traced = losses.bpr_max(tf.linalg.diag_part(scores[:, :batch]), scores, mask,
                                    bpreg=0.7)
        traced_grad = tape.gradient(traced, scores, output_gradients=upstream).numpy()
        np.testing.assert_allclose(loss, traced, rtol=1e-6)
        np.testing.assert_allclose(grad, traced_grad, atol=1e-5)
        want_loss, want_grad = numpy_bpr_max_and_gradient(scores.numpy(), column_valid, 0.7)
        np.testing.assert_allclose(loss, want_loss, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(grad, upstream[:, None] * want_grad, atol=1e-5)
        assert not grad[:, column_valid == 0][column_valid[:batch] > 0].any()


def numpy_port_cross_entropy_and_gradient(x):
    """The PyTorch port's -log(softmax(x)[:, 0] + 1e-24) per row (target in column 0) and its
    gradient with respect to x, by hand: dL/dx_j = p / (p + 1e-24) * (s_j - [j == 0])."""
    x = x.astype("float64")
    e = np.exp(x - x.max(axis=1, keepdims=True))
    s = e / e.sum(axis=1, keepdims=True)
    p = s[:, 0]
    grad = (p / (p + 1e-24))[:, None] * (s - np.eye(1, x.shape[1]))
    return -np.log(p + 1e-24), grad


def test_cross_entropy_equals_the_port_in_value_and_gradient_for_far_targets(rng):
    """Targets from level with the negatives to 200 below them: the loss stops near 55.26
    (-log 1e-24) and the gradient fades, where the exact logsumexp would give 200 and a full
    gradient."""
    import tensorflow as tf

    gaps = np.array([0.0, 5.0, 20.0, 50.0, 54.0, 56.0, 60.0, 80.0, 100.0, 200.0], "float32")
    negatives = rng.normal(size=(len(gaps), 7)).astype("float32")
    positive = negatives.max(axis=1) - gaps
    positive[0] = negatives[0].max() + 1.0  # one target above the others
    x = tf.constant(np.concatenate([positive[:, None], negatives], axis=1))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = losses.cross_entropy(x[:, 0], x[:, 1:], tf.ones_like(x[:, 1:]))
    grad = tape.gradient(loss, x).numpy()
    want_loss, want_grad = numpy_port_cross_entropy_and_gradient(x.numpy())
    np.testing.assert_allclose(loss.numpy(), want_loss, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(grad, want_grad, atol=1e-5)
    assert loss.numpy().max() < 55.27 and abs(grad[-1]).max() < 1e-6
    # The same through the sampled head's column form (the training path).
    scores = np.zeros((len(gaps), len(gaps) + 7), "float32")
    scores[:, len(gaps):] = negatives
    scores[np.arange(len(gaps)), np.arange(len(gaps))] = positive
    scores[:, :len(gaps)] += np.triu(np.full((len(gaps),) * 2, -1e4, "float32"), 1)
    scores[:, :len(gaps)] += np.tril(np.full((len(gaps),) * 2, -1e4, "float32"), -1)
    t = tf.constant(scores)
    with tf.GradientTape() as tape:
        tape.watch(t)
        column_loss = losses.cross_entropy_over_columns(t, tf.ones(scores.shape[1]))
    column_grad = tape.gradient(column_loss, t).numpy()
    np.testing.assert_allclose(column_loss.numpy(), want_loss, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.diag(column_grad[:, :len(gaps)]), want_grad[:, 0], atol=1e-5)
    np.testing.assert_allclose(column_grad[:, len(gaps):], want_grad[:, 1:], atol=1e-5)


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
    from tf_gru4rec.nn.layers import HashDropout

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

    from tf_gru4rec.nn.layers.dropout import hash32, hash_uniform

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
    per_layer = [2 if model.gru.reset_after(i) else 3 for i in range(2)]  # W_x, U | U_rz, U_c
    assert len(matrices) == sum(per_layer) + 1 + ("embedding" in str(list(matrices)))
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
