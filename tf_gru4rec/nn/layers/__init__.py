"""Keras layers of GRU4Rec: the GRU stack and the item output table."""

from tf_gru4rec.nn.layers.dropout import HashDropout
from tf_gru4rec.nn.layers.gru_stack import BlockGlorotUniform, GRUStack, weight_seed
from tf_gru4rec.nn.layers.item_scores import ItemScores

__all__ = ["BlockGlorotUniform", "GRUStack", "ItemScores", "HashDropout", "weight_seed"]
