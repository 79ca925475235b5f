"""The item output table: scores `h . w_j + b_j` for sampled or all items."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from tf_gru4rec.nn.layers.gru_stack import BlockGlorotUniform, weight_seed


@keras.saving.register_keras_serializable("tf_gru4rec")
class ItemScores(keras.layers.Layer):
    """Item vectors W [n_items, dim] and biases b [n_items].

    `embed(ids)` gives W[ids] (the tied input embedding of the constrained mode),
    `sampled(h, columns)` scores [B, C] of the items `columns` [C], and `call(h)` the scores
    [B, n_items] of every item.
    """

    def __init__(self, n_items: int, dim: int, seed=None, **kwargs):
        super().__init__(**kwargs)
        if n_items < 1 or dim < 1:
            raise ValueError(f"`n_items` and `dim` should be positive. Received: {n_items}, {dim}")
        self.n_items = int(n_items)
        self.dim = int(dim)
        self.seed = seed

    def build(self, input_shape=None):
        self.item_weights = self.add_weight(
            shape=(self.n_items, self.dim),
            initializer=BlockGlorotUniform(1, weight_seed(self.seed, "item_weights")),
            name="item_weights")
        self.item_bias = self.add_weight(shape=(self.n_items,), initializer="zeros",
                                         name="item_bias")

    def embed(self, ids):
        return ops.take(self.item_weights, ids, axis=0)

    def sampled(self, h, columns):
        weights = ops.take(self.item_weights, columns, axis=0)  # (C, dim)
        bias = ops.take(self.item_bias, columns, axis=0)  # (C,)
        # transpose_b: no transposed copy of the table (Keras' ops.transpose would make one).
        return tf.matmul(h, weights, transpose_b=True) + bias  # (B, C)

    def call(self, h):
        return tf.matmul(h, self.item_weights, transpose_b=True) + self.item_bias  # (B, n_items)

    def get_config(self):
        config = super().get_config()
        config.update({"n_items": self.n_items, "dim": self.dim, "seed": self.seed})
        return config
