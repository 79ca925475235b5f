"""Warm-started retraining with a growing item vocabulary.

New items are appended to the vocabulary (`ItemVocabulary.extend`), so every item the old model
knew keeps its index: the grown model copies all weights and fills the new rows of the item
tables with fresh initial values (zero biases).
"""

from __future__ import annotations

import logging

import numpy as np

from tf_gru4rec.data.vocabulary import ItemVocabulary
from tf_gru4rec.nn.model import GRU4Rec

logger = logging.getLogger(__name__)


def grow_model(model: GRU4Rec, old_vocabulary: ItemVocabulary,
               new_vocabulary: ItemVocabulary) -> GRU4Rec:
    """A built GRU4Rec for `new_vocabulary` holding `model`'s weights for the old items.

    `new_vocabulary` must start with `old_vocabulary` (use `old_vocabulary.extend(ids)`).
    Not compiled: compile it (e.g. `training.build_model`'s optimizer) before `fit`.
    """
    n_old, n_new = len(old_vocabulary), len(new_vocabulary)
    if n_old != model.n_items:
        raise ValueError(f"The model has {model.n_items} items, the old vocabulary {n_old}")
    if n_new < n_old or not np.array_equal(new_vocabulary.raw_ids[:n_old],
                                           old_vocabulary.raw_ids):
        raise ValueError("`new_vocabulary` should extend `old_vocabulary` (same ids first, in "
                         "the same order): build it with old_vocabulary.extend(new_ids)")
    config = model.get_config()
    config["n_items"] = n_new
    grown = GRU4Rec.from_config(config)
    grown.build()
    old_weights = {w.path: w for w in model.weights}
    for weight in grown.weights:
        old = old_weights.get(weight.path)
        if old is None:
            continue
        value = old.numpy()
        if old.shape == weight.shape:
            weight.assign(value)
        elif (old.shape[0], weight.shape[0], old.shape[1:]) == (n_old, n_new, weight.shape[1:]):
            fresh = weight.numpy()
            fresh[:n_old] = value
            weight.assign(fresh)
        else:
            raise ValueError(f"Cannot grow weight {weight.path}: {old.shape} -> {weight.shape}")
    logger.info("grew the model from %d to %d items", n_old, n_new)
    return grown
