"""A stack of GRU layers with explicit state in and out, written from SPEC.md's equations."""

from __future__ import annotations

import math
import zlib

import keras
from keras import ops

from tf_gru4rec.layers.dropout import HashDropout


def weight_seed(seed, name: str):
    """The seed of one weight's initialiser: a function of the layer seed and the weight's
    name, so that no two weights share a random stream (None stays None: unseeded)."""
    if seed is None:
        return None
    return zlib.crc32(f"{int(seed)}/{name}".encode()) & 0x7FFFFFFF


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
      dropout: dropout rate on layer outputs during training: one rate for every layer, or a
        list of one rate per layer.
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
        rates = ([float(p) for p in dropout] if isinstance(dropout, (list, tuple))
                 else [float(dropout)] * len(self.units))
        if len(rates) != len(self.units) or not all(0.0 <= p < 1.0 for p in rates):
            raise ValueError("`dropout` should be a rate in [0, 1) or one such rate per layer "
                             f"({len(self.units)}). Received: {dropout}")
        self.one_hot_items = int(one_hot_items)
        self.dropout = rates
        self.seed = seed
        self._dropout_layers = [
            HashDropout(p, seed=None if seed is None else seed + i) for i, p in enumerate(rates)
        ]

    def build(self, input_shape):
        self.input_kernels, self.recurrent_gates, self.recurrent_candidates, self.biases = (
            [], [], [], [])
        in_dim = None if self.one_hot_items else int(input_shape[-1])
        for i, h in enumerate(self.units):
            rows = self.one_hot_items if (i == 0 and self.one_hot_items) else in_dim
            self.input_kernels.append(self._weight((rows, 3 * h), 3, f"W_x{i}"))
            self.recurrent_gates.append(self._weight((h, 2 * h), 2, f"U_rz{i}"))
            self.recurrent_candidates.append(self._weight((h, h), 1, f"U_c{i}"))
            self.biases.append(self.add_weight(shape=(3 * h,), initializer="zeros", name=f"b{i}"))
            in_dim = h

    def _weight(self, shape, blocks, name):
        """A Glorot-uniform weight with its own random stream (see `weight_seed`)."""
        initializer = BlockGlorotUniform(blocks, weight_seed(self.seed, f"gru/{name}"))
        return self.add_weight(shape=shape, initializer=initializer, name=name)

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
