"""A stack of GRU layers with explicit state in and out, written from SPEC.md's equations."""

from __future__ import annotations

import math
import zlib

import keras
import tensorflow as tf
from keras import ops

from tf_gru4rec.nn.layers.dropout import HashDropout


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


CELL_FORMS = ("reset-after", "reset-before")


@keras.saving.register_keras_serializable("tf_gru4rec")
class GRUStack(keras.layers.Layer):
    """GRU layers with explicit state in and out, in one of two forms.

    "reset-after" (`torch.nn.GRUCell`, the form of the official PyTorch port, and of Keras'
    GRU with `reset_after=True`): an input bias b and a recurrent bias b_h per layer,

        r = sigmoid(x W_r + b_r + h U_r + b_hr)
        z = sigmoid(x W_z + b_z + h U_z + b_hz)
        n = tanh(x W_n + b_n + r * (h U_n + b_hn))
        h' = z * h + (1 - z) * n

    "reset-before" (the 2016 paper and the Theano code): one bias per layer,

        r = sigmoid(x W_r + h U_r + b_r)
        z = sigmoid(x W_z + h U_z + b_z)
        c = tanh(x W_c + (r * h) U_c + b_c)
        h' = (1 - z) * h + z * c

    A one-hot first layer (`one_hot_items > 0`) always takes the reset-before form, as the
    port's `GRUEmbedding` does; `cell` sets the form of every other layer. Dropout `dropout`
    acts on each layer's output in training, and the dropped output is also the state carried
    to the next step, as in the original implementation.

    Args:
      units: hidden size of each layer, e.g. `[100]`.
      one_hot_items: if > 0, the first layer takes item indices [B] of a catalogue of this
        size: its input weights are a [one_hot_items, 3 * units[0]] table, which equals a
        one-hot input times a dense matrix without building the one-hot vector.
      dropout: dropout rate on layer outputs during training: one rate for every layer, or a
        list of one rate per layer.
      cell: "reset-after" or "reset-before" (see above).
      seed: seed of the initialisers and of dropout.

    Call: `outputs, states = stack(x, states, training)` with x [B, D] (or int [B] item
    indices in one-hot mode) and states a list of [B, units[l]]; outputs [B, units[-1]].
    """

    def __init__(self, units, one_hot_items: int = 0, dropout: float = 0.0,
                 cell: str = "reset-after", seed=None, **kwargs):
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
        if cell not in CELL_FORMS:
            raise ValueError(f"`cell` should be one of {CELL_FORMS}. Received: {cell!r}")
        self.one_hot_items = int(one_hot_items)
        self.dropout = rates
        self.cell = cell
        self.seed = seed
        self._dropout_layers = [
            HashDropout(p, seed=None if seed is None else seed + i) for i, p in enumerate(rates)
        ]

    @classmethod
    def from_config(cls, config):
        # Saved before the cell became an option: those stacks were all reset-before.
        config = {"cell": "reset-before", **config}
        return super().from_config(config)

    def reset_after(self, i: int) -> bool:
        """Whether layer i applies the reset gate after its recurrent product."""
        return self.cell == "reset-after" and not (i == 0 and self.one_hot_items)

    def build(self, input_shape):
        # Per layer: W_x [in, 3h] and b [3h]; reset-after: U [h, 3h] and b_h [3h];
        # reset-before: U_rz [h, 2h] and U_c [h, h] (None where a form has no such weight).
        self.input_kernels, self.biases = [], []
        self.recurrent_kernels, self.recurrent_biases = [], []
        self.recurrent_gates, self.recurrent_candidates = [], []
        in_dim = None if self.one_hot_items else int(input_shape[-1])
        for i, h in enumerate(self.units):
            rows = self.one_hot_items if (i == 0 and self.one_hot_items) else in_dim
            self.input_kernels.append(self._weight((rows, 3 * h), 3, f"W_x{i}"))
            if self.reset_after(i):
                self.recurrent_kernels.append(self._weight((h, 3 * h), 3, f"U{i}"))
            else:
                self.recurrent_gates.append(self._weight((h, 2 * h), 2, f"U_rz{i}"))
                self.recurrent_candidates.append(self._weight((h, h), 1, f"U_c{i}"))
            self.biases.append(self.add_weight(shape=(3 * h,), initializer="zeros", name=f"b{i}"))
            if self.reset_after(i):
                self.recurrent_biases.append(
                    self.add_weight(shape=(3 * h,), initializer="zeros", name=f"b_h{i}"))
            in_dim = h

    def _weight(self, shape, blocks, name):
        """A Glorot-uniform weight with its own random stream (see `weight_seed`)."""
        initializer = BlockGlorotUniform(blocks, weight_seed(self.seed, f"gru/{name}"))
        return self.add_weight(shape=shape, initializer=initializer, name=name)

    def layer_weights(self, i: int) -> dict:
        """Layer i's weights by role: {"W_x", "b"} plus {"U", "b_h"} (reset-after) or
        {"U_rz", "U_c"} (reset-before)."""
        weights = {"W_x": self.input_kernels[i], "b": self.biases[i]}
        k = sum(self.reset_after(j) for j in range(i))  # index among reset-after layers
        if self.reset_after(i):
            weights.update(U=self.recurrent_kernels[k], b_h=self.recurrent_biases[k])
        else:
            weights.update(U_rz=self.recurrent_gates[i - k], U_c=self.recurrent_candidates[i - k])
        return weights

    def initial_states(self, batch_size: int):
        """Zero states: a list of [batch_size, units[l]]."""
        return [ops.zeros((batch_size, h)) for h in self.units]

    def call(self, x, states, training=False):
        new_states = []
        for i, h in enumerate(self.units):
            weights = self.layer_weights(i)
            if i == 0 and self.one_hot_items:
                projected = ops.take(weights["W_x"], x, axis=0) + weights["b"]
            else:
                projected = ops.matmul(x, weights["W_x"]) + weights["b"]
            if self.reset_after(i):
                x = _reset_after_step(projected, states[i], weights["U"], weights["b_h"], h,
                                      written_gradient=training is True)
            else:
                x = _reset_before_step(projected, states[i], weights["U_rz"], weights["U_c"], h)
            x = self._dropout_layers[i](x, training=training)
            new_states.append(x)
        return x, new_states

    def get_config(self):
        config = super().get_config()
        config.update({"units": self.units, "one_hot_items": self.one_hot_items,
                       "dropout": self.dropout, "cell": self.cell, "seed": self.seed})
        return config


def _reset_after_step(projected, state, recurrent, recurrent_bias, h, written_gradient=False):
    """torch.nn.GRUCell: projected = x W + b [B, 3h] ([r | z | n]), state [B, h].

    With `written_gradient` (training) the gates' gradient is `_reset_after_gates_trained`'s
    written-out one; the forward values are the same either way."""
    hidden = ops.matmul(state, recurrent) + recurrent_bias  # (B, 3h)
    if written_gradient:
        return _reset_after_gates_trained(projected, hidden, state)
    return _reset_after_gates(projected, hidden, state, h)[0]


def _reset_after_gates(projected, hidden, state, h):
    """The reset-after cell after its two products: projected [B, 3h], hidden = state U + b_h
    [B, 3h], state [B, h] -> (new state [B, h], (r, z, n, hidden_n) each [B, h])."""
    rz = ops.sigmoid(projected[:, : 2 * h] + hidden[:, : 2 * h])
    r, z = rz[:, :h], rz[:, h:]
    hidden_n = hidden[:, 2 * h :]
    candidate = ops.tanh(projected[:, 2 * h :] + r * hidden_n)
    return z * state + (1.0 - z) * candidate, (r, z, candidate, hidden_n)


@tf.custom_gradient
def _reset_after_gates_trained(projected, hidden, state):
    """`_reset_after_gates` with its gradient written out. For g = dL/dh':
        d_n = g (1 - z) (1 - n^2)        (the candidate's pre-activation)
        d_z = g (h - n) z (1 - z)
        d_r = d_n hidden_n r (1 - r)
    dL/dprojected = [d_r | d_z | d_n], dL/dhidden = [d_r | d_z | d_n r], dL/dh = g z (the
    path through `hidden` is the product's, outside). The traced gradient of the slices adds
    padded copies of the three parts, which XLA computes element by element over [B, 3h]
    (BENCHMARKS.md, "Fifth look"); here they are joined once."""
    new_state, (r, z, candidate, hidden_n) = _reset_after_gates(
        projected, hidden, state, state.shape[-1])

    def gradient(upstream):
        d_candidate = upstream * (1.0 - z) * (1.0 - candidate * candidate)
        d_update = upstream * (state - candidate) * (z * (1.0 - z))
        d_reset = d_candidate * hidden_n * (r * (1.0 - r))
        d_projected = tf.concat([d_reset, d_update, d_candidate], axis=1)
        d_hidden = tf.concat([d_reset, d_update, d_candidate * r], axis=1)
        return d_projected, d_hidden, upstream * z

    return new_state, gradient


def _reset_before_step(projected, state, recurrent_gates, recurrent_candidates, h):
    """The paper's GRU: projected = x W + b [B, 3h] ([r | z | c]), state [B, h]."""
    rz = ops.sigmoid(projected[:, : 2 * h] + ops.matmul(state, recurrent_gates))
    r, z = rz[:, :h], rz[:, h:]
    candidate = ops.tanh(projected[:, 2 * h :] + ops.matmul(r * state, recurrent_candidates))
    return (1.0 - z) * state + z * candidate
