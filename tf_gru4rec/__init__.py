"""tf-gru4rec: GRU4Rec session-based recommendations in TensorFlow/Keras 3."""

__version__ = "0.1.0"
