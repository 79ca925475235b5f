"""AdagradM: dense and row-sparse updates against a NumPy reference of the original's rule."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_gru4rec.config import TrainConfig
from tf_gru4rec.nn import optimizers
from tf_gru4rec.nn.optimizers import NO_ENTRY, AdagradM, concatenated_parts, sum_duplicate_rows
from tf_gru4rec.training import train


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


@pytest.mark.parametrize("jit", [False, True])
def test_sum_duplicate_rows_gives_every_entry_its_row_sum(jit):
    first_entry = tf.Variable(tf.fill([7], NO_ENTRY))
    sums = tf.function(sum_duplicate_rows, jit_compile=jit)
    for rows, values, expected in [([5, 2, 5, 0, 5], [1, 2, 3, 4, 5], [9, 2, 9, 4, 9]),
                                   ([0, 6, 6, 2, 1], [1, 2, 3, 4, 5], [1, 5, 5, 4, 5])]:
        slices = tf.IndexedSlices(tf.constant(values, tf.float32)[:, None], tf.constant(rows))
        idx, summed = sums(slices, first_entry)
        np.testing.assert_array_equal(idx.numpy(), rows)
        np.testing.assert_array_equal(summed.numpy()[:, 0], expected)
        # The scratch is back to "no entry" for the next call.
        np.testing.assert_array_equal(first_entry.numpy(), NO_ENTRY)


@pytest.mark.parametrize("momentum", [0.0, 0.3])
@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("path", ["row-sparse", "masked-dense", "masked-dense in parts",
                                  "unique-rows"])
def test_sparse_and_dense_updates_match_reference(momentum, jit, path, rng):
    if path == "unique-rows" and jit:
        pytest.skip("the unique-rows path has dynamic shapes: not for XLA")
    table = keras.Variable(rng.normal(size=(8, 3)).astype("float32"))
    dense = keras.Variable(rng.normal(size=(2, 3)).astype("float32"))
    bias = keras.Variable(rng.normal(size=(8,)).astype("float32"))  # a table of rank 1
    opt = AdagradM(learning_rate=0.1, momentum=momentum,
                   dense_row_factor=100.0 if path.startswith("masked-dense") else 0.0,
                   static_shapes=path != "unique-rows")
    opt.build([table, dense, bias])
    ref_t, ref_d = table.numpy().astype(np.float64), dense.numpy().astype(np.float64)
    ref_b = bias.numpy().astype(np.float64)
    acc_t, acc_d, acc_b = np.zeros_like(ref_t), np.zeros_like(ref_d), np.zeros_like(ref_b)
    mom_t, mom_d, mom_b = np.zeros_like(ref_t), np.zeros_like(ref_d), np.zeros_like(ref_b)

    def slices(values, rows):
        if path != "masked-dense in parts":
            return tf.IndexedSlices(values, rows)
        # As TensorFlow aggregates two gathers' gradients: scattered part by part.
        return tf.IndexedSlices(tf.concat([values[:2], values[2:]], 0),
                                tf.concat([rows[:2], rows[2:]], 0))

    @tf.function(jit_compile=jit)
    def apply(rows, values, dense_grad, bias_values):
        opt.apply([slices(values, rows), dense_grad, slices(bias_values, rows)],
                  [table, dense, bias])

    for _ in range(4):
        rows = rng.integers(0, 8, size=6)  # with duplicates
        values = rng.normal(size=(6, 3)).astype("float32")
        values[rows == rows[0]] = 0.0  # a touched row whose gradient is zero: momentum moves
        bias_values = rng.normal(size=6).astype("float32")
        dense_grad = rng.normal(size=(2, 3)).astype("float32")
        apply(tf.constant(rows), tf.constant(values), tf.constant(dense_grad),
              tf.constant(bias_values))
        reference_step(ref_t, acc_t, mom_t, rows, values.astype(np.float64), 0.1, momentum)
        reference_step(ref_b, acc_b, mom_b, rows, bias_values.astype(np.float64), 0.1,
                       momentum)
        reference_step(ref_d, acc_d, mom_d, range(2), dense_grad.astype(np.float64), 0.1,
                       momentum)
    np.testing.assert_allclose(table.numpy(), ref_t, atol=1e-5)
    np.testing.assert_allclose(dense.numpy(), ref_d, atol=1e-5)
    np.testing.assert_allclose(bias.numpy(), ref_b, atol=1e-5)


def test_rejects_bad_hyperparameters_and_round_trips_config():
    with pytest.raises(ValueError, match="momentum"):
        AdagradM(momentum=1.5)
    with pytest.raises(ValueError, match="epsilon"):
        AdagradM(epsilon=0)
    opt = AdagradM(0.2, momentum=0.1)
    clone = AdagradM.from_config(opt.get_config())
    assert clone.momentum == 0.1 and float(clone.learning_rate) == pytest.approx(0.2)


def test_concatenated_parts_are_found_only_where_certain():
    values = tf.constant(np.arange(12, dtype="float32").reshape(6, 2))
    rows = tf.constant([0, 1, 2, 3, 4, 5])

    @tf.function
    def lengths(value_splits, row_splits):
        pieces = [tf.concat(tf.split(t, s), 0) for t, s in ((values, value_splits),
                                                           (rows, row_splits))]
        parts = concatenated_parts(tf.IndexedSlices(pieces[0], pieces[1]))
        return [int(indices.shape[0]) for indices, _ in parts]

    assert lengths([2, 4], [2, 4]) == [2, 4]
    assert lengths([2, 4], [4, 2]) == [6]  # split differently: kept whole
    assert lengths([6], [6]) == [6]
    assert [int(i.shape[0]) for i, _ in concatenated_parts(
        tf.IndexedSlices(tf.concat([values[:2], values[2:]], 0),
                         tf.concat([rows[:2], rows[2:]], 0)))] == [6]  # eagerly: whole


def test_the_item_table_is_updated_part_by_part_with_the_same_result(synthetic_log,
                                                                      monkeypatch):
    """Training's item-table gradient (the inputs' rows and the scored columns' rows, which
    TensorFlow concatenates) reaches the masked update in its two parts, and the weights are
    those of scattering the concatenation whole."""
    log = synthetic_log[0]
    # 300 items, 8 + 100 columns + 8 inputs per step: the masked dense update.
    config = TrainConfig(layers=[16], batch_size=8, n_sample=100, learning_rate=0.1,
                         momentum=0.1, n_epochs=1, steps_per_execution=5, seed=1)
    seen = []

    def recorded(slices):
        parts = concatenated_parts(slices)
        seen.append(sorted(int(indices.shape[0]) for indices, _ in parts))
        return parts

    monkeypatch.setattr(optimizers, "concatenated_parts", recorded)
    in_parts = [v.numpy() for v in train(config, log, verbose=0).model.trainable_variables]
    assert [8, 108] in seen, seen
    monkeypatch.setattr(optimizers, "concatenated_parts",
                        lambda slices: [(slices.indices, slices.values)])
    whole = [v.numpy() for v in train(config, log, verbose=0).model.trainable_variables]
    for a, b in zip(in_parts, whole, strict=True):
        np.testing.assert_array_equal(a, b)
