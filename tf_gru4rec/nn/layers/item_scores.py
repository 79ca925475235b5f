"""The item output table: scores `h . w_j + b_j` for sampled or all items."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops
from tensorflow.compiler.tf2xla.python.xla import optimization_barrier

from tf_gru4rec.nn.layers.gru_stack import BlockGlorotUniform, weight_seed

# `sampled_product` puts the items on the rows of its products when a step has at most this
# many slots and at least this many columns per slot (BENCHMARKS.md, "Sixth look": 1.2-1.6x
# faster at 16-48 slots with 16+ columns each, on AVX2 and AVX-512; 0.8-1.0x at 64 slots and
# more, or with in-batch negatives only).
ITEMS_MAJOR_MAX_SLOTS = 32
ITEMS_MAJOR_MIN_COLUMNS_PER_SLOT = 16


def items_major(slots, columns) -> bool:
    """Whether `sampled_product` of `slots` x `columns` scores (static ints, or None when
    unknown) computes its products items-major."""
    return (slots is not None and columns is not None and slots <= ITEMS_MAJOR_MAX_SLOTS
            and columns >= ITEMS_MAJOR_MIN_COLUMNS_PER_SLOT * slots)


def sampled_product(h, rows):
    """Scores h . rows^T [B, C] of GRU outputs h [B, H] against item vectors rows [C, H].

    With few slots and many columns (`items_major`) the products of the forward and backward
    passes take the items as their rows: XLA's CPU dot library (YNNPACK) runs [C, H] x [H, B]
    faster than [B, H] x [H, C] when B is small. The maths is the same; the gradients' sums
    may run in another order (other rounding in the last bits).
    """
    if not items_major(h.shape[0], rows.shape[0]):
        return tf.matmul(h, rows, transpose_b=True)
    return _items_major_product(h, rows)


@tf.custom_gradient
def _items_major_product(h, rows):
    """h [B, H] . rows [C, H]^T as the transpose of rows . h^T [C, B]; the gradients
    dh = g . rows [B, H] and drows = g^T . h [C, H] from g^T [C, B].

    XLA would fold each transpose into its product, back to the slots-major form: the
    optimisation barriers keep the products as written.
    """
    (scores_t,) = optimization_barrier(tf.matmul(rows, h, transpose_b=True))  # (C, B)

    def gradient(upstream):  # (B, C)
        (upstream_t,) = optimization_barrier(tf.transpose(upstream))  # (C, B)
        return (tf.matmul(upstream_t, rows, transpose_a=True),  # (B, H)
                tf.matmul(upstream_t, h))  # (C, H)

    return tf.transpose(scores_t), gradient


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
        return sampled_product(h, weights) + bias  # (B, C)

    def call(self, h):
        # transpose_b: no transposed copy of the table (Keras' ops.transpose would make one).
        return tf.matmul(h, self.item_weights, transpose_b=True) + self.item_bias  # (B, n_items)

    def get_config(self):
        config = super().get_config()
        config.update({"n_items": self.n_items, "dim": self.dim, "seed": self.seed})
        return config
