"""Session-parallel `tf.data` input for `GRU4Rec.fit`.

Each element is one training step, a dict of
  inputs int32 [B], targets int32 [B], reset bool [B], valid bool [B], negatives int32 [S]
(negatives only when `n_sample > 0`), or with `dataset(blocks=True)` a block of up to
`steps_per_block` consecutive steps (the same entries with a leading [K] axis), which
`GRU4Rec.train_step` runs in one call: one element per block instead of per step removes most of
the per-step cost of the input pipeline. Both give the same steps and the same negative
samples. Iterating the dataset once gives one epoch; the epoch
number (which decides the session order when shuffling and the negative samples) is set by
`EpochSync`, a callback that `fit` calls at each epoch start, so a run resumed at epoch k sees
the same data as an uninterrupted one.
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import tensorflow as tf

from tf_gru4rec.data.sampling import NegativeSampler
from tf_gru4rec.data.session_log import SessionLog
from tf_gru4rec.data.session_parallel import StepArrays, session_order, session_parallel_steps

PREFETCH_BLOCKS = 2  # elements (steps or blocks) prepared ahead of the training loop


class SessionParallelInput:
    """Builds the per-epoch session-parallel steps of a `SessionLog` and their dataset.

    Args:
      log: the training sessions.
      batch_size: number of slots B.
      n_sample: additional negatives per step, shared by the batch (0: mini-batch only).
      sample_alpha: samples are drawn proportional to support ** sample_alpha.
      shuffle_sessions: shuffle the session order each epoch (default: start-time order).
      seed: seeds the session shuffle and the negative samples.
      steps_per_block: steps per block: negatives are drawn for a whole block at once, and
        `dataset(blocks=True)` yields blocks of this many steps (the last one may be shorter).
    """

    def __init__(self, log: SessionLog, batch_size: int, n_sample: int = 0,
                 sample_alpha: float = 0.5, shuffle_sessions: bool = False, seed: int = 0,
                 steps_per_block: int = 1024):
        if steps_per_block < 1:
            raise ValueError(f"`steps_per_block` should be >= 1. Received: {steps_per_block}")
        self.log = log
        self.batch_size = int(batch_size)
        self.n_sample = int(n_sample)
        self.shuffle_sessions = bool(shuffle_sessions)
        self.seed = int(seed)
        self.epoch = 0
        self.skip_steps = 0
        self.steps_per_block = int(steps_per_block)
        self.sampler = (
            NegativeSampler(log.item_support(), sample_alpha, n_sample, seed=seed,
                            steps_per_block=self.steps_per_block)
            if n_sample > 0 else None
        )

    @functools.lru_cache(maxsize=2)  # noqa: B019 - one object per training run
    def steps(self, epoch: int) -> StepArrays:
        """The steps of epoch `epoch` (cached)."""
        order = session_order(self.log, self.shuffle_sessions, seed=self.seed * 7919 + epoch)
        return session_parallel_steps(self.log, self.batch_size, order)

    def steps_per_epoch(self, epoch: int = 0) -> int:
        return self.steps(epoch).n_steps

    def _epoch_arrays(self):
        arrays = self.steps(self.epoch)
        skip = self.skip_steps
        self.skip_steps = 0
        return (arrays.inputs[skip:], arrays.targets[skip:], arrays.reset[skip:],
                arrays.valid[skip:], np.int64(self.epoch), np.int64(skip))

    def dataset(self, blocks: bool = False) -> tf.data.Dataset:
        """A re-iterable dataset; each iteration is the epoch `self.epoch`.

        blocks: yield blocks of `steps_per_block` steps ([K, ...] entries) instead of steps.
        """
        batch = self.batch_size

        def make_epoch(_):
            inputs, targets, reset, valid, epoch, skip = tf.numpy_function(
                self._epoch_arrays, [],
                [tf.int32, tf.int32, tf.bool, tf.bool, tf.int64, tf.int64], stateful=True,
            )
            for t in (inputs, targets, reset, valid):
                t.set_shape([None, batch])
            epoch.set_shape([])
            skip.set_shape([])
            n_steps = tf.shape(inputs, out_type=tf.int64)[0]
            steps = tf.data.Dataset.from_tensor_slices({
                "inputs": inputs, "targets": targets, "reset": reset, "valid": valid,
                "epoch": tf.fill([n_steps], epoch), "step": tf.range(skip, skip + n_steps)})
            # Blocks of steps_per_block steps share one vectorised draw (the sample cache).
            steps = steps.batch(self.steps_per_block)
            if self.sampler is not None:
                steps = steps.map(self.sampler.add_to_block)
            steps = steps.map(lambda s: {k: v for k, v in s.items() if k not in ("epoch", "step")})
            return steps if blocks else steps.unbatch()

        options = tf.data.Options()
        options.deterministic = True
        # No autotuning: its optimisation thread sleeps between rounds, and destroying an
        # epoch's iterator (Keras makes a new one every epoch) waits for that thread with the
        # GIL held: 1-2 s per epoch of a ~3 s epoch (BENCHMARKS.md, issue 22). A
        # fixed buffer of two blocks keeps the next block ready while one trains.
        options.autotune.enabled = False
        return (tf.data.Dataset.from_tensors(0).flat_map(make_epoch)
                .prefetch(PREFETCH_BLOCKS).with_options(options))

    def element_spec(self, blocks: bool = False) -> dict:
        lead = [None] if blocks else []
        spec = {
            "inputs": tf.TensorSpec(lead + [self.batch_size], tf.int32),
            "targets": tf.TensorSpec(lead + [self.batch_size], tf.int32),
            "reset": tf.TensorSpec(lead + [self.batch_size], tf.bool),
            "valid": tf.TensorSpec(lead + [self.batch_size], tf.bool),
        }
        if self.sampler is not None:
            spec["negatives"] = tf.TensorSpec(lead + [self.n_sample], tf.int32)
        return spec

    def callback(self) -> keras.callbacks.Callback:
        return EpochSync(self)


class EpochSync(keras.callbacks.Callback):
    """Tells a `SessionParallelInput` which epoch `fit` is starting."""

    def __init__(self, source: SessionParallelInput):
        super().__init__()
        self.source = source

    def on_epoch_begin(self, epoch, logs=None):
        self.source.epoch = epoch
