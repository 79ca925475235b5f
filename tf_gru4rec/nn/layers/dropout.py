"""Dropout whose mask comes from a counter-based integer hash.

Keras' `Dropout` uses TensorFlow's default stateless generator, which under XLA on CPU is
ThreeFry and costs ~2 ms for a [50, 100] mask here, more than the rest of a training step;
Philox costs ~50 us inside the compiled training loop (5% of a step). The mask here is a pure
function of (seed, step counter, element index) through two rounds of a 32-bit integer hash
(`hash32`: multiplies, shifts and xors that XLA fuses and vectorises, ~1 us). Same semantics:
inverted dropout, identity outside training, a new mask at every call.
"""

from __future__ import annotations

import keras
import tensorflow as tf

_GOLDEN = 0x9E3779B9


def hash32(x: tf.Tensor) -> tf.Tensor:
    """A 32-bit integer hash with full avalanche ("lowbias32"): uint32 in, uint32 out."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(16, tf.uint32)))
    x = x * tf.constant(0x7FEB352D, tf.uint32)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(15, tf.uint32)))
    x = x * tf.constant(0x846CA68B, tf.uint32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(16, tf.uint32)))


def hash_uniform(shape, seed: tf.Tensor) -> tf.Tensor:
    """float32 numbers in [0, 1) of `shape` from an int [2] `seed`: element i is the top 24
    bits of hash32(hash32(i * golden + seed[0]) ^ hash32(seed[1] + golden)), divided by 2^24."""
    seed = tf.cast(seed, tf.uint32)
    size = tf.reduce_prod(shape)
    index = tf.range(size, dtype=tf.int32)
    x = hash32(tf.bitcast(index, tf.uint32) * tf.constant(_GOLDEN, tf.uint32) + seed[0])
    x = hash32(tf.bitwise.bitwise_xor(x, hash32(seed[1] + tf.constant(_GOLDEN, tf.uint32))))
    # The top 24 bits give exactly representable float32 values in [0, 1).
    top = tf.bitwise.right_shift(x, tf.constant(8, tf.uint32))
    return tf.reshape(tf.cast(top, tf.float32) * (1.0 / (1 << 24)), shape)


@keras.saving.register_keras_serializable("tf_gru4rec")
class HashDropout(keras.layers.Layer):
    """Zeroes each input element with probability `rate` in training and scales the rest by
    1 / (1 - rate). Input and output: any shape."""

    def __init__(self, rate: float, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"`rate` should be in [0, 1). Received: {rate}")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=False):
        if not training or self.rate == 0.0:
            return inputs
        keep = hash_uniform(tf.shape(inputs), self._replica_seed(self.seed_generator.next()))
        keep = keep >= self.rate
        return inputs * tf.cast(keep, inputs.dtype) / (1.0 - self.rate)

    @staticmethod
    def _replica_seed(seed):
        """Each replica of a tf.distribute strategy draws its own masks: replica r > 0 adds r
        to the second seed word (replica 0, and training without a strategy, keep it)."""
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return seed
        replica = tf.cast(context.replica_id_in_sync_group, seed.dtype)
        return seed + tf.stack([tf.zeros_like(replica), replica * 0x10001])

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate, "seed": self.seed})
        return config
