"""Adagrad with momentum and row-sparse updates of item tables, as the original GRU4Rec trains.

For each variable p with gradient g:
    acc  <- acc + g^2
    step =  -learning_rate * g / sqrt(acc + epsilon)
    mom  <- momentum * mom + step           (momentum > 0)
    p    <- p + mom                         (or p + step when momentum == 0)

When g is a `tf.IndexedSlices` (a gather from an item table) only the rows it touches are
read and written: duplicate row indices are summed first, as a sparse gradient is coalesced.
Under XLA the sums use only static shapes (`sum_duplicate_rows`: a scatter-min of positions,
no sort); outside XLA `tf.unique` does it. When the table has few rows compared with the
gathered ones (at most `dense_row_factor` times as many), the same update is computed over the
whole table with the untouched rows masked, which is faster than gathering and scattering
rows; a gradient that TensorFlow concatenated from several gathers is scattered part by part
there (`concatenated_parts`). All paths give the same result. Keras 3's own
Adagrad and Adam densify such gradients and update every row (momentum included) every step.
"""

from __future__ import annotations

import keras
import tensorflow as tf

# Entries of a row-position scratch vector hold this between updates ("no entry yet").
NO_ENTRY = 2**31 - 1


def sum_duplicate_rows(slices: tf.IndexedSlices, first_entry: tf.Variable):
    """Sum the values of entries that share a row index, with static shapes and no sort.

    `first_entry` is an int32 [n_rows] scratch variable holding `NO_ENTRY` everywhere: a
    scatter-min of entry positions finds each touched row's first entry, entries are summed
    into that position and read back, and the touched entries are reset to `NO_ENTRY`, so the
    cost grows with the number of entries N, not with the table.
    Returns (indices int32 [N], values [N, ...]): entry i's value is the sum over every
    entry with its row, so duplicate entries carry identical values (writing them all back
    with a scatter that overwrites gives the same result in any order).
    """
    indices = tf.cast(slices.indices, tf.int32)
    n = tf.shape(indices)[0]
    first_entry.scatter_min(tf.IndexedSlices(tf.range(n), indices))
    representative = tf.gather(first_entry, indices)  # (N,) position of the row's first entry
    first_entry.scatter_update(tf.IndexedSlices(tf.fill([n], NO_ENTRY), indices))
    sums = tf.math.unsorted_segment_sum(slices.values, representative, n)
    return indices, tf.gather(sums, representative)


def concatenated_parts(slices: tf.IndexedSlices) -> list[tuple[tf.Tensor, tf.Tensor]]:
    """The (indices [N_k], values [N_k, ...]) parts that a traced `tf.concat` joined into `slices`.

    The gradient of a table read by several gathers (the item table embeds the inputs and
    scores the sampled items) is one IndexedSlices whose indices and values TensorFlow
    concatenates, gather by gather. Scattering the parts one after the other sums the same
    values in the same order, without the copy into one array, and XLA can scatter the scored
    columns' part (first in the concatenation) before the GRU's backward pass ends, which
    gives the inputs' part (BENCHMARKS.md, "Fourth look").
    Eagerly, when indices and values were not concatenated alike, or when a part's length is
    unknown (the pairing would not be certain): [(indices, values)].
    """
    whole = [(slices.indices, slices.values)]
    if tf.executing_eagerly():
        return whole
    index_op, value_op = slices.indices.op, slices.values.op
    if index_op.type != "ConcatV2" or value_op.type != "ConcatV2":
        return whole
    *index_parts, index_axis = index_op.inputs
    *value_parts, value_axis = value_op.inputs
    if (tf.get_static_value(index_axis) != 0 or tf.get_static_value(value_axis) != 0
            or len(index_parts) != len(value_parts)):
        return whole
    parts = list(zip(index_parts, value_parts, strict=True))
    for indices, values in parts:
        if indices.shape.rank != 1 or indices.shape[0] is None or \
                indices.shape[0] != values.shape[0]:
            return whole
    return parts


@keras.saving.register_keras_serializable("tf_gru4rec")
class AdagradM(keras.optimizers.Optimizer):
    """Adagrad with (heavy-ball) momentum and row-sparse item-table updates (see module doc).

    Args:
      learning_rate: step size (the original's `learning_rate`).
      momentum: momentum factor in [0, 1) (the original's `momentum`).
      epsilon: added to the accumulator under the square root.
    """

    def __init__(self, learning_rate=0.05, momentum=0.0, epsilon=1e-6, dense_row_factor=3.0,
                 static_shapes=True, name="adagradm", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"`momentum` should be in [0, 1). Received: {momentum}")
        if epsilon <= 0:
            raise ValueError(f"`epsilon` should be a positive float. Received: {epsilon}")
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.dense_row_factor = float(dense_row_factor)
        self.static_shapes = bool(static_shapes)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._accumulators = [self.add_variable_from_reference(v, "accumulator") for v in var_list]
        self._momentums = (
            [self.add_variable_from_reference(v, "momentum") for v in var_list]
            if self.momentum > 0 else []
        )
        # Scratch of `sum_duplicate_rows`, one int32 entry per row: not optimizer state (always
        # NO_ENTRY between steps), so kept out of Keras' tracking and out of checkpoints.
        object.__setattr__(self, "_first_entry", [
            tf.Variable(tf.fill([v.shape[0]], NO_ENTRY), trainable=False,
                        name=f"first_entry_{i}") if len(v.shape) else None
            for i, v in enumerate(var_list)])

    def update_step(self, gradient, variable, learning_rate):
        i = self._get_variable_index(variable)
        acc = self._accumulators[i]
        mom = self._momentums[i] if self.momentum > 0 else None
        lr = tf.cast(learning_rate, variable.dtype)
        if isinstance(gradient, tf.IndexedSlices) and not self.static_shapes:
            self._unique_rows_update(gradient, variable, acc, mom, lr)
        elif isinstance(gradient, tf.IndexedSlices):
            n_rows, n_touched = variable.shape[0], gradient.indices.shape[0]
            if n_touched is not None and n_rows <= self.dense_row_factor * n_touched:
                self._masked_dense_update(gradient, variable, acc, mom, lr)
            else:
                self._sparse_update(gradient, variable, acc, mom, lr, self._first_entry[i])
        else:
            self._dense_update(tf.convert_to_tensor(gradient), variable, acc, mom, lr)

    def _dense_update(self, grad, variable, acc, mom, lr):
        self.assign_add(acc, tf.square(grad))
        step = -lr * grad / tf.sqrt(acc.value + self.epsilon)
        if mom is not None:
            self.assign(mom, self.momentum * mom.value + step)
            step = mom.value
        self.assign_add(variable, step)

    def _masked_dense_update(self, gradient, variable, acc, mom, lr):
        grad = tf.zeros(variable.shape, variable.dtype)
        touched = tf.zeros(variable.shape[:1], tf.float32)
        for indices, values in concatenated_parts(gradient):
            rows = tf.cast(indices, tf.int32)[:, None]
            grad = tf.tensor_scatter_nd_add(grad, rows, tf.cast(values, grad.dtype))
            touched = tf.tensor_scatter_nd_max(touched, rows, tf.ones_like(rows[:, 0], tf.float32))
        touched = tf.reshape(touched > 0, [-1] + [1] * (len(grad.shape) - 1))
        self.assign_add(acc, tf.square(grad))
        step = -lr * grad / tf.sqrt(acc.value + self.epsilon)
        if mom is not None:
            new = tf.where(touched, self.momentum * mom.value + step, mom.value)
            self.assign(mom, new)
            step = tf.where(touched, new, tf.zeros_like(new))
        self.assign_add(variable, step)

    def _sparse_update(self, gradient, variable, acc, mom, lr, first_entry):
        """Row update with static shapes (for XLA): every touched row is read, computed and
        written once per entry that touches it (duplicates write the same value)."""
        self._rows_update(*sum_duplicate_rows(gradient, first_entry), variable, acc, mom, lr)

    def _unique_rows_update(self, gradient, variable, acc, mom, lr):
        """Row update with `tf.unique` (dynamic shapes: not for XLA): only the distinct
        touched rows are read, computed and written."""
        idx, segment = tf.unique(tf.cast(gradient.indices, tf.int32))
        grad = tf.math.unsorted_segment_sum(gradient.values, segment, tf.shape(idx)[0])
        self._rows_update(idx, grad, variable, acc, mom, lr)

    def _rows_update(self, idx, grad, variable, acc, mom, lr):
        """The update of rows `idx` [N] with their summed gradients `grad` [N, ...]; a row
        listed twice must carry the same gradient both times (then both writes agree)."""
        acc_rows = tf.gather(acc.value, idx) + tf.square(grad)
        self.assign(acc, tf.IndexedSlices(acc_rows, idx))
        step = -lr * grad * tf.math.rsqrt(acc_rows + self.epsilon)
        if mom is not None:
            step = self.momentum * tf.gather(mom.value, idx) + step
            self.assign(mom, tf.IndexedSlices(step, idx))
        self.assign(variable, tf.IndexedSlices(tf.gather(variable, idx) + step, idx))

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "epsilon": self.epsilon,
                       "dense_row_factor": self.dense_row_factor,
                       "static_shapes": self.static_shapes})
        return config
