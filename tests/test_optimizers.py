"""AdagradM: dense and row-sparse updates against a NumPy reference of the original's rule."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_gru4rec.optimizers import AdagradM, coalesce_rows


def reference_step(p, acc, mom, rows, grads, lr, momentum, eps=1e-6):
    """Sum duplicate rows, then update only those rows (dense: rows = all)."""
    summed = {}
    for r, g in zip(rows, grads, strict=True):
        summed[r] = summed.get(r, 0) + g
    for r, g in summed.items():
        acc[r] += g * g
        step = -lr * g / np.sqrt(acc[r] + eps)
        if momentum > 0:
            mom[r] = momentum * mom[r] + step
            step = mom[r]
        p[r] += step


def test_coalesce_rows_sums_duplicates():
    slices = tf.IndexedSlices(tf.constant([[1.0], [2.0], [3.0], [4.0]]),
                              tf.constant([5, 2, 5, 5]))
    idx, values, keep = coalesce_rows(slices)
    n = int(keep.numpy().sum())
    assert n == 2
    got = dict(zip(idx.numpy()[:n], values.numpy()[:n, 0], strict=True))
    assert got == {2: 2.0, 5: 8.0}
    np.testing.assert_array_equal(values.numpy()[n:], 0.0)


@pytest.mark.parametrize("momentum", [0.0, 0.3])
@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("path", ["row-sparse", "masked-dense", "unique-rows"])
def test_sparse_and_dense_updates_match_reference(momentum, jit, path, rng):
    if path == "unique-rows" and jit:
        pytest.skip("the unique-rows path has dynamic shapes: not for XLA")
    table = keras.Variable(rng.normal(size=(8, 3)).astype("float32"))
    dense = keras.Variable(rng.normal(size=(2, 3)).astype("float32"))
    opt = AdagradM(learning_rate=0.1, momentum=momentum,
                   dense_row_factor=100.0 if path == "masked-dense" else 0.0,
                   static_shapes=path != "unique-rows")
    opt.build([table, dense])
    ref_t, ref_d = table.numpy().astype(np.float64), dense.numpy().astype(np.float64)
    acc_t, acc_d = np.zeros_like(ref_t), np.zeros_like(ref_d)
    mom_t, mom_d = np.zeros_like(ref_t), np.zeros_like(ref_d)

    @tf.function(jit_compile=jit)
    def apply(rows, values, dense_grad):
        opt.apply([tf.IndexedSlices(values, rows), dense_grad], [table, dense])

    for _ in range(4):
        rows = rng.integers(0, 8, size=6)  # with duplicates
        values = rng.normal(size=(6, 3)).astype("float32")
        dense_grad = rng.normal(size=(2, 3)).astype("float32")
        apply(tf.constant(rows), tf.constant(values), tf.constant(dense_grad))
        reference_step(ref_t, acc_t, mom_t, rows, values.astype(np.float64), 0.1, momentum)
        reference_step(ref_d, acc_d, mom_d, range(2), dense_grad.astype(np.float64), 0.1,
                       momentum)
    np.testing.assert_allclose(table.numpy(), ref_t, atol=1e-5)
    np.testing.assert_allclose(dense.numpy(), ref_d, atol=1e-5)


def test_rejects_bad_hyperparameters_and_round_trips_config():
    with pytest.raises(ValueError, match="momentum"):
        AdagradM(momentum=1.5)
    with pytest.raises(ValueError, match="epsilon"):
        AdagradM(epsilon=0)
    opt = AdagradM(0.2, momentum=0.1)
    clone = AdagradM.from_config(opt.get_config())
    assert clone.momentum == 0.1 and float(clone.learning_rate) == pytest.approx(0.2)
