"""A stack of GRU layers with explicit state in and out, written from SPEC.md's equations."""

from __future__ import annotations

import math

import keras
from keras import ops

from tf_gru4rec.layers.dropout import HashDropout


@keras.saving.register_keras_serializable("tf_gru4rec")
class BlockGlorotUniform(keras.initializers.Initializer):
    """Glorot-uniform over each of `blocks` column blocks of a [rows, blocks * cols] matrix:
    U(-s, s) with s = sqrt(6 / (rows + cols)), as the original initialises each gate matrix."""

    def __init__(self, blocks: int = 1, seed=None):
        self.blocks = int(blocks)
        self.seed = seed
        self._seed_generator = keras.random.SeedGenerator(seed) if seed is not None else None

    def __call__(self, shape, dtype=None):
        limit = math.sqrt(6.0 / (shape[0] + shape[1] / self.blocks))
        seed = self._seed_generator if self._seed_generator is not None else None
        return keras.random.uniform(shape, -limit, limit, dtype=dtype, seed=seed)

    def get_config(self):
        return {"blocks": self.blocks, "seed": self.seed}


@keras.saving.register_keras_serializable("tf_gru4rec")
class GRUStack(keras.layers.Layer):
    """GRU layers as in the paper, with biases:

        r = sigmoid(x W_r + h U_r + b_r)
        z = sigmoid(x W_z + h U_z + b_z)
        c = tanh(x W_c + (r * h) U_c + b_c)
        h' = (1 - z) * h + z * c

    The reset gate multiplies the state before the matrix product (Keras' `GRUCell` with
    `reset_after=True` applies it after, a different model). Dropout `dropout` acts on each
    layer's output in training, and the dropped output is also the state carried to the next
    step, as in the original implementation.

    Args:
      units: hidden size of each layer, e.g. `[100]`.
      one_hot_items: if > 0, the first layer takes item indices [B] of a catalogue of this
        size: its input weights are a [one_hot_items, 3 * units[0]] table, which equals a
        one-hot input times a dense matrix without building the one-hot vector.
      dropout: dropout rate on layer outputs during training.
      seed: seed of the initialisers and of dropout.

    Call: `outputs, states = stack(x, states, training)` with x [B, D] (or int [B] item
    indices in one-hot mode) and states a list of [B, units[l]]; outputs [B, units[-1]].
    """

    def __init__(self, units, one_hot_items: int = 0, dropout: float = 0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.units = [int(u) for u in units]
        if not self.units or min(self.units) < 1:
            raise ValueError(
                f"`units` should be a non-empty list of positive ints. Received: {units}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` should be in [0, 1). Received: {dropout}")
        self.one_hot_items = int(one_hot_items)
        self.dropout = float(dropout)
        self.seed = seed
        self._dropout_layers = [
            HashDropout(dropout, seed=None if seed is None else seed + i)
            for i in range(len(self.units))
        ]

    def build(self, input_shape):
        self.input_kernels, self.recurrent_gates, self.recurrent_candidates, self.biases = (
            [], [], [], [])
        in_dim = None if self.one_hot_items else int(input_shape[-1])
        for i, h in enumerate(self.units):
            seed = None if self.seed is None else self.seed * 101 + i
            rows = self.one_hot_items if (i == 0 and self.one_hot_items) else in_dim
            self.input_kernels.append(self.add_weight(
                shape=(rows, 3 * h), initializer=BlockGlorotUniform(3, seed), name=f"W_x{i}"))
            self.recurrent_gates.append(self.add_weight(
                shape=(h, 2 * h), initializer=BlockGlorotUniform(2, seed), name=f"U_rz{i}"))
            self.recurrent_candidates.append(self.add_weight(
                shape=(h, h), initializer=BlockGlorotUniform(1, seed), name=f"U_c{i}"))
            self.biases.append(self.add_weight(shape=(3 * h,), initializer="zeros", name=f"b{i}"))
            in_dim = h

    def initial_states(self, batch_size: int):
        """Zero states: a list of [batch_size, units[l]]."""
        return [ops.zeros((batch_size, h)) for h in self.units]

    def call(self, x, states, training=False):
        new_states = []
        for i, h in enumerate(self.units):
            if i == 0 and self.one_hot_items:
                projected = ops.take(self.input_kernels[0], x, axis=0) + self.biases[0]
            else:
                projected = ops.matmul(x, self.input_kernels[i]) + self.biases[i]
            x = self._cell(projected, states[i], i, h)
            x = self._dropout_layers[i](x, training=training)
            new_states.append(x)
        return x, new_states

    def _cell(self, projected, state, i, h):
        x_rz, x_c = projected[:, : 2 * h], projected[:, 2 * h :]
        rz = ops.sigmoid(x_rz + ops.matmul(state, self.recurrent_gates[i]))
        r, z = rz[:, :h], rz[:, h:]
        candidate = ops.tanh(x_c + ops.matmul(r * state, self.recurrent_candidates[i]))
        return (1.0 - z) * state + z * candidate

    def get_config(self):
        config = super().get_config()
        config.update({"units": self.units, "one_hot_items": self.one_hot_items,
                       "dropout": self.dropout, "seed": self.seed})
        return config
