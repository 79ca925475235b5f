"""The item vocabulary inside the served graph: raw item ids (strings) <-> item indices."""

from __future__ import annotations

import tensorflow as tf


class VocabularyTables(tf.Module):
    """Two static hash tables initialised from a text file of raw item ids (one id per line,
    line i = item index i; exported as the asset `assets/items.txt`).

    Args:
      vocab_file: the text file of raw item ids.
    """

    def __init__(self, vocab_file: str):
        super().__init__(name="vocabulary")
        self.id_to_index = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                vocab_file, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER), default_value=-1)
        self.index_to_id = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                vocab_file, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
                tf.string, tf.lookup.TextFileIndex.WHOLE_LINE), default_value="")

    def indices(self, item_id):
        """Raw ids string (any shape) -> int64 indices of the same shape, -1 for unknown ids."""
        return self.id_to_index.lookup(item_id)

    def ids(self, indices):
        """int64 indices (any shape, all valid) -> raw ids string of the same shape."""
        return self.index_to_id.lookup(indices)
