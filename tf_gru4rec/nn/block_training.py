"""Training GRU4Rec in blocks of session-parallel steps: the `BlockTraining` mixin of
`tf_gru4rec.nn.model.GRU4Rec`.

A block is K consecutive steps (entries [K, B]); `train_block` trains on its first `n_steps`
steps in one call. With `step_compilation="full"` the loop over the steps, the forward and
backward passes and the optimizer update of every step are one XLA program (no launch cost per
step; the item tables are updated in place, see `tf_gru4rec.nn.xla_flags`). Keras `fit` runs it
through `train_step`, the training loop of every scale (`tf_gru4rec.training.loop`) calls it
directly on one replica; on several replicas the loop runs `forward_backward` per step instead
(`tf_gru4rec.training.distributed`).
"""

from __future__ import annotations

import tensorflow as tf
from keras import ops

STEP_KEYS = ("inputs", "targets", "reset", "valid", "negatives")


class BlockTraining:
    """Training steps of a model with `train_states` variables [B, H] per layer, `step`,
    `sampled_loss`, `batch_size` and a `loss_tracker` (mixed into `GRU4Rec`)."""

    def forward_backward(self, data, states=None):
        """One training step's gradients: (grads, per-event loss [B], valid [B], new states).

        `states` ([B, H] per layer) default to the `train_states` variables; the
        distributed loop (`tf_gru4rec.training.distributed`) passes each replica's own. The loss is
        divided by `batch_size`, the global number of slots, so gradients summed over replicas
        equal those of one replica holding all the slots.
        """
        keep = 1.0 - ops.cast(data["reset"], "float32")[:, None]
        states = self.train_states if states is None else states
        states = [ops.convert_to_tensor(s) * keep for s in states]
        valid = ops.cast(data["valid"], "float32")
        with tf.GradientTape() as tape:
            hidden, new_states = self.step(data["inputs"], states, training=True)
            per_event = self.sampled_loss(hidden, data["targets"], valid, data.get("negatives"))
            per_event = per_event * valid
            # The original sums over the batch and divides by the batch size.
            loss = ops.sum(per_event) / float(self.batch_size)
        grads = tape.gradient(loss, self.trainable_variables)
        return grads, per_event, valid, new_states

    def compile(self, optimizer="adagrad", step_compilation="full", **kwargs):
        """Keras `compile`, plus `step_compilation`: how a block of training steps runs
        ("full": the whole block is one XLA program, a loop over the steps; None: no XLA).

        Keras' own `jit_compile` defaults to False here: the block compiles itself
        (`SessionParallelInput.dataset(blocks=True)` gives one block per `fit` step). An
        `AdagradM` optimizer gets `static_shapes` set to what the compilation needs.
        """
        if step_compilation not in ("full", None):
            raise ValueError("`step_compilation` should be 'full' or None. "
                             f"Received: {step_compilation!r}")
        self.step_compilation = step_compilation
        kwargs.setdefault("jit_compile", False)
        if hasattr(optimizer, "static_shapes"):
            # AdagradM: static-shape row sums under XLA, `tf.unique` (faster) outside it.
            optimizer.static_shapes = (step_compilation == "full"
                                       or kwargs["jit_compile"] is not False)
        super().compile(optimizer=optimizer, **kwargs)

    def train_step(self, data):
        """One step (entries [B]) or a block of K steps (entries [K, B], from
        `SessionParallelInput.dataset(blocks=True)`), run one after another in this call."""
        if isinstance(data, tuple):
            data = data[0]
        if data["inputs"].shape.rank == 1:
            data = {key: value[None] for key, value in data.items()}
        self.train_block(data)
        return {"loss": self.loss_tracker.result()}

    def train_block(self, data, n_steps=None):
        """Trains on the first `n_steps` (default: all) steps of a block (entries [K, ...];
        other keys are ignored), in order, in one call compiled per `step_compilation`.

        Returns float32 [2]: the block's loss summed over its events, and its events.
        """
        data = {key: data[key] for key in STEP_KEYS if key in data}
        if n_steps is None:
            n_steps = tf.shape(data["inputs"])[0]
        return self._compiled_block()(data, tf.cast(n_steps, tf.int32))

    def _run_block(self, data, n_steps):
        def body(i, totals):
            grads, per_event, valid, new_states = self.forward_backward(
                {key: value[i] for key, value in data.items()})
            self._update(grads, per_event, valid, new_states)
            return i + 1, totals + tf.stack([tf.reduce_sum(per_event), tf.reduce_sum(valid)])

        _, totals = tf.while_loop(lambda i, _: i < n_steps, body,
                                  (tf.constant(0), tf.zeros([2])), parallel_iterations=1)
        return totals

    def _compiled_block(self):
        """The block update as a `tf.function`; with `step_compilation="full"` the loop over
        the block's steps is one XLA program (no per-step launch cost; the item tables stay
        in place across the steps, see `tf_gru4rec.nn.xla_flags`)."""
        mode = getattr(self, "step_compilation", None)
        if getattr(self, "_train_step_fn", None) is None or self._train_step_mode != mode:
            self._train_step_fn = tf.function(self._run_block, jit_compile=mode == "full")
            self._train_step_mode = mode
        return self._train_step_fn

    def _update(self, grads, per_event, valid, new_states):
        self.optimizer.apply(grads, self.trainable_variables)
        for variable, value in zip(self.train_states, new_states, strict=True):
            variable.assign(value)
        self.loss_tracker.update_state(per_event, sample_weight=valid)

    @property
    def metrics(self):
        return [self.loss_tracker]

    def reset_train_states(self):
        for variable in self.train_states:
            variable.assign(ops.zeros_like(variable))
