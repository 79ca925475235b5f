"""Adagrad with momentum and row-sparse updates of item tables, as the original GRU4Rec trains.

For each variable p with gradient g:
    acc  <- acc + g^2
    step =  -learning_rate * g / sqrt(acc + epsilon)
    mom  <- momentum * mom + step           (momentum > 0)
    p    <- p + mom                         (or p + step when momentum == 0)

When g is a `tf.IndexedSlices` (a gather from an item table) only the rows it touches are
read and written: duplicate row indices are summed first, as a sparse gradient is coalesced.
The deduplication uses only static shapes (sort, cumulative sum, segment sum), so the update
compiles with XLA. When the table has few rows compared with the gathered ones (at most
`dense_row_factor` times as many), the same update is computed over the whole table with the
untouched rows masked, which is faster than sorting. Both give the same result. Keras 3's own
Adagrad and Adam densify such gradients and update every row (momentum included) every step.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def coalesce_rows(slices: tf.IndexedSlices):
    """Sum duplicate rows of an `IndexedSlices` with static shapes.

    Returns (indices [N], values [N, ...], keep [N] float): the first `n_unique` entries hold
    the distinct row indices and their summed values; the rest are padding with keep = 0
    (their index repeats a real one and their value is zero).
    """
    indices = tf.cast(slices.indices, tf.int32)
    n = tf.shape(indices)[0]
    order = tf.argsort(indices, stable=True)
    sorted_idx = tf.gather(indices, order)
    is_new = tf.concat([[True], sorted_idx[1:] != sorted_idx[:-1]], axis=0)
    segment = tf.cumsum(tf.cast(is_new, tf.int32)) - 1
    values = tf.math.unsorted_segment_sum(tf.gather(slices.values, order), segment, n)
    unique_idx = tf.math.unsorted_segment_max(sorted_idx, segment, n)
    n_unique = segment[-1] + 1
    keep = tf.cast(tf.range(n) < n_unique, values.dtype)
    unique_idx = tf.where(keep > 0, unique_idx, sorted_idx[0])
    return unique_idx, values, keep


@keras.saving.register_keras_serializable("tf_gru4rec")
class AdagradM(keras.optimizers.Optimizer):
    """Adagrad with (heavy-ball) momentum and row-sparse item-table updates (see module doc).

    Args:
      learning_rate: step size (the original's `learning_rate`).
      momentum: momentum factor in [0, 1) (the original's `momentum`).
      epsilon: added to the accumulator under the square root.
    """

    def __init__(self, learning_rate=0.05, momentum=0.0, epsilon=1e-6, dense_row_factor=4.0,
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
                self._sparse_update(gradient, variable, acc, mom, lr)
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
        n_rows = variable.shape[0]
        grad = tf.math.unsorted_segment_sum(gradient.values, gradient.indices, n_rows)
        touched = tf.math.unsorted_segment_max(
            tf.ones_like(gradient.indices, tf.float32), gradient.indices, n_rows) > 0
        touched = tf.reshape(touched, [-1] + [1] * (len(grad.shape) - 1))
        self.assign_add(acc, tf.square(grad))
        step = -lr * grad / tf.sqrt(acc.value + self.epsilon)
        if mom is not None:
            new = tf.where(touched, self.momentum * mom.value + step, mom.value)
            self.assign(mom, new)
            step = tf.where(touched, new, tf.zeros_like(new))
        self.assign_add(variable, step)

    def _sparse_update(self, gradient, variable, acc, mom, lr):
        idx, grad, keep = coalesce_rows(gradient)
        keep = tf.reshape(keep, [-1] + [1] * (len(grad.shape) - 1))
        acc_rows = tf.gather(acc.value, idx) + tf.square(grad)
        self.assign_add(acc, tf.IndexedSlices(tf.square(grad) * keep, idx))
        step = -lr * grad / tf.sqrt(acc_rows + self.epsilon)
        if mom is not None:
            old = tf.gather(mom.value, idx)
            new = self.momentum * old + step
            self.assign_add(mom, tf.IndexedSlices((new - old) * keep, idx))
            step = new
        self.assign_add(variable, tf.IndexedSlices(step * keep, idx))

    def _unique_rows_update(self, gradient, variable, acc, mom, lr):
        """Row update with `tf.unique` (dynamic shapes: not for XLA): only the distinct
        touched rows are read, computed and written."""
        idx, segment = tf.unique(tf.cast(gradient.indices, tf.int32))
        grad = tf.math.unsorted_segment_sum(gradient.values, segment, tf.shape(idx)[0])
        acc_rows = tf.gather(acc.value, idx) + tf.square(grad)
        self.assign(acc, tf.IndexedSlices(acc_rows, idx))
        step = -lr * grad * tf.math.rsqrt(acc_rows + self.epsilon)
        if mom is not None:
            step = self.momentum * tf.gather(mom.value, idx) + step
            self.assign(mom, tf.IndexedSlices(step, idx))
        self.assign_add(variable, tf.IndexedSlices(step, idx))

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "epsilon": self.epsilon,
                       "dense_row_factor": self.dense_row_factor,
                       "static_shapes": self.static_shapes})
        return config
