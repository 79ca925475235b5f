"""The network's pieces: Keras layers (`layers`: the GRU stack, the item output table,
dropout), the ranking losses (`losses`), the AdagradM optimizer (`optimizers`) and the XLA
flags the training step needs (`xla_flags`, applied when the model module is imported).

This package imports nothing itself, so importing one piece loads only what it needs.
"""
