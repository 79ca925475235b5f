"""One GRU step of an exported model's inference path, on flattened states."""

from __future__ import annotations

import tensorflow as tf


class GRUStep:
    """(item indices, flattened GRU states) -> (GRU output, new states), with the model's own
    layers.

    A plain object, not a `tf.Module`: the Keras model it holds is not a SavedModel dependency
    (it would bring its optimizer and training state); `keras.export.ExportArchive` saves the
    variables the signatures read.

    Args:
      model: a built `GRU4Rec`.
      item_rows: item indices int64 [M] -> float32 item table rows [M, H]: the tied input
        embedding of the constrained mode (`ItemScorer.item_rows`).
    """

    def __init__(self, model, item_rows):
        self._model = model
        self._item_rows = item_rows
        self.layer_sizes = [int(size) for size in model.layer_sizes]
        self.embedding_mode = model.embedding_mode

    def __call__(self, item_idx, state):
        """item_idx int64 [M] (all >= 0), state [M, S] -> (hidden [M, H], new state [M, S])."""
        states = tf.split(state, self.layer_sizes, axis=1) if len(self.layer_sizes) > 1 else [
            state]
        if self.embedding_mode == "constrained":  # the tied embedding: the table's blocks
            hidden, new_states = self._model.gru(self._item_rows(item_idx), states,
                                                 training=False)
        else:
            hidden, new_states = self._model.step(tf.cast(item_idx, tf.int32), states,
                                                  training=False)
        new_state = tf.concat(new_states, axis=1) if len(new_states) > 1 else new_states[0]
        return hidden, new_state
