"""Save and load a trained model directory:
  config.json          the TrainConfig
  model.json           the Keras model config (GRU4Rec.get_config())
  vocabulary.json      raw item ids in index order
  model.weights.h5     the weights (item support for logQ included)
  metrics.json         written by the CLI after evaluation
"""

from __future__ import annotations

import dataclasses
import json
import os

from tf_gru4rec.config import TrainConfig
from tf_gru4rec.data.vocabulary import ItemVocabulary
from tf_gru4rec.nn.model import GRU4Rec


def save_model_dir(path: str, model: GRU4Rec, vocabulary: ItemVocabulary,
                   config: TrainConfig) -> None:
    """Write a trained model directory (see the module docstring)."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config.to_dict(), f, indent=2)
    with open(os.path.join(path, "model.json"), "w") as f:
        json.dump(model.get_config(), f, indent=2)
    vocabulary.save(os.path.join(path, "vocabulary.json"))
    model.save_weights(os.path.join(path, "model.weights.h5"))


@dataclasses.dataclass
class TrainedModel:
    model: GRU4Rec
    vocabulary: ItemVocabulary
    config: TrainConfig


def load_model_dir(path: str) -> TrainedModel:
    """Load a model directory written by `save_model_dir` (weights, vocabulary, config)."""
    for name in ("config.json", "model.json", "vocabulary.json", "model.weights.h5"):
        if not os.path.exists(os.path.join(path, name)):
            raise FileNotFoundError(f"{path!r} is not a trained model directory: no {name}")
    with open(os.path.join(path, "config.json")) as f:
        config = TrainConfig.from_dict(json.load(f))
    with open(os.path.join(path, "model.json")) as f:
        model_config = json.load(f)
    model = GRU4Rec.from_config(model_config)
    model.build()
    model.load_weights(os.path.join(path, "model.weights.h5"))
    vocabulary = ItemVocabulary.load(os.path.join(path, "vocabulary.json"))
    if len(vocabulary) != model.n_items:
        raise ValueError(f"{path}: vocabulary has {len(vocabulary)} items, model {model.n_items}")
    return TrainedModel(model, vocabulary, config)
