"""`GRU4Rec`, a Keras model trained on session-parallel steps (`model.fit`, or the training
loop of `tf_gru4rec.training.loop`); its block-of-steps training is
`tf_gru4rec.nn.block_training`."""

from __future__ import annotations

import logging

import keras
import numpy as np
from keras import ops

from tf_gru4rec.nn import losses, xla_flags
from tf_gru4rec.nn.block_training import BlockTraining
from tf_gru4rec.nn.layers import BlockGlorotUniform, GRUStack, HashDropout, ItemScores, weight_seed

logger = logging.getLogger(__name__)

xla_flags.apply()  # before the first XLA compilation of the process (see xla_flags)

EMBEDDING_MODES = ("one-hot", "separate", "constrained")


@keras.saving.register_keras_serializable("tf_gru4rec")
class GRU4Rec(BlockTraining, keras.Model):
    """GRU4Rec: item -> embedding -> GRU stack -> scores of sampled items -> ranking loss.

    Args (names follow the original implementation):
      n_items: catalogue size.
      layers: GRU hidden sizes, e.g. `[100]`.
      embedding: size of a separate learned input embedding; 0 means none (one-hot input).
      constrained_embedding: tie the input embedding to the output item vectors (then
        `embedding` is ignored and the input size is `layers[-1]`).
      dropout_p_embed: dropout on the input embedding; in one-hot mode, where the first GRU
        layer is the embedding, dropout on the first layer's output (as in the original
        PyTorch port).
      dropout_p_hidden: dropout on each GRU layer's output (in one-hot mode: on each layer's
        but the first).
      loss: "cross-entropy", "bpr-max", "top1-max", "bpr" or "top1".
      final_act: activation on the scores before the loss: "linear", "tanh" or "elu"
        (elu with `elu_param`); None picks "elu" for bpr-max with elu_param > 0, else linear.
      bpreg: score regularisation of bpr-max.
      elu_param: alpha of the elu final activation.
      logq: weight of the logQ correction: logq * log(support) (in-batch targets) and
        logq * sample_alpha * log(support) (extra negatives) are subtracted from the scores
        before the final activation, for every loss (as in the original Theano code; for
        cross-entropy that equals the PyTorch port, which applies it to cross-entropy only).
      sample_alpha: the exponent the extra negatives were drawn with (used by logq).
      batch_size: number of session-parallel slots B in training (fixes the state shape).
      gru_cell: "reset-after" (`torch.nn.GRUCell`, the official PyTorch port's form and the
        default) or "reset-before" (the 2016 paper's form); a one-hot first layer is
        reset-before either way, as in the port (see `GRUStack`).
      seed: seeds the initialisation (each weight its own stream) and dropout.

    Training data: dicts from `SessionParallelInput.dataset()` (inputs, targets, reset,
    valid, negatives). The hidden state of the B slots lives in non-trainable variables: each
    step zeroes the slots marked `reset`, runs the GRU one step and stores the new state.
    """

    def __init__(self, n_items, layers=(100,), embedding=0, constrained_embedding=True,
                 dropout_p_embed=0.0, dropout_p_hidden=0.0, loss="cross-entropy",
                 final_act=None, bpreg=0.0, elu_param=0.0, logq=0.0, sample_alpha=0.5,
                 batch_size=32, gru_cell="reset-after", seed=None, **kwargs):
        super().__init__(**kwargs)
        self.n_items = int(n_items)
        self.layer_sizes = [int(u) for u in layers]
        self.embedding = int(embedding)
        self.constrained_embedding = bool(constrained_embedding)
        self.dropout_p_embed = float(dropout_p_embed)
        self.dropout_p_hidden = float(dropout_p_hidden)
        self.loss_name = loss
        self.loss_fn = losses.get(loss)
        if final_act is None:
            final_act = "elu" if (loss == "bpr-max" and elu_param > 0) else "linear"
        if final_act not in ("linear", "tanh", "elu"):
            raise ValueError(f"`final_act` should be linear, tanh or elu. Received: {final_act!r}")
        self.final_act = final_act
        self.bpreg = float(bpreg)
        self.elu_param = float(elu_param)
        self.logq = float(logq)
        self.sample_alpha = float(sample_alpha)
        self.batch_size = int(batch_size)
        self.gru_cell = gru_cell
        self.seed = seed
        one_hot = not self.constrained_embedding and self.embedding == 0
        self.embedding_mode = "constrained" if self.constrained_embedding else (
            "one-hot" if one_hot else "separate")
        self.item_scores = ItemScores(self.n_items, self.layer_sizes[-1], seed=seed,
                                      name="item_scores")
        self.input_embedding = (
            keras.layers.Embedding(
                self.n_items, self.embedding, name="input_embedding",
                embeddings_initializer=BlockGlorotUniform(1, weight_seed(seed, "embedding")))
            if self.embedding_mode == "separate" else None)
        self.embedding_dropout = HashDropout(
            self.dropout_p_embed, seed=None if seed is None else seed + 7)
        self.gru = GRUStack(self.layer_sizes, one_hot_items=self.n_items if one_hot else 0,
                            dropout=self._layer_dropout(), cell=gru_cell, seed=seed,
                            name="gru")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        # "full" or None: see `compile` and `_compiled_block`.
        self.step_compilation = None
        self._train_step_fn = None  # built by `_compiled_block`
        self._train_step_mode = None

    def _layer_dropout(self):
        """Dropout rate after each GRU layer. In one-hot mode the first layer is the input
        embedding (the original PyTorch port's `GRUEmbedding`), so its output takes
        `dropout_p_embed` and the later layers `dropout_p_hidden`."""
        rates = [self.dropout_p_hidden] * len(self.layer_sizes)
        if self.embedding_mode != "one-hot":
            return rates
        if len(rates) == 1 and self.dropout_p_hidden > 0:
            logger.warning(
                "dropout_p_hidden=%g has no layer to act on: in one-hot mode (embedding=0, "
                "constrained_embedding=False) the dropout of the first (here the only) GRU "
                "layer is dropout_p_embed, as in the original", self.dropout_p_hidden)
        return [self.dropout_p_embed] + rates[1:]

    # ----------------------------------------------------------------- building blocks
    def build(self, input_shape=None):
        self.item_scores.build()
        if self.input_embedding is not None:
            self.input_embedding.build((None,))
        in_dim = {"constrained": self.layer_sizes[-1], "separate": self.embedding,
                  "one-hot": None}[self.embedding_mode]
        self.gru.build((None, in_dim))
        self.train_states = [
            self.add_weight(shape=(self.batch_size, h), initializer="zeros", trainable=False,
                            name=f"train_state{i}")
            for i, h in enumerate(self.layer_sizes)]
        self.log_support = self.add_weight(shape=(self.n_items,), initializer="zeros",
                                           trainable=False, name="log_support")
        self.built = True

    def set_item_support(self, support: np.ndarray) -> None:
        """Training-set event counts per item [n_items], used by the logQ correction."""
        support = np.asarray(support, dtype=np.float32)
        if support.shape != (self.n_items,):
            raise ValueError(f"`support` should have shape ({self.n_items},). "
                             f"Received: {support.shape}")
        self.log_support.assign(np.log(np.maximum(support, 1.0)))

    def embed(self, item_ids, training=False):
        """Input of the first GRU layer for item indices [B]: [B, D] (or the ids, one-hot)."""
        if self.embedding_mode == "one-hot":
            return item_ids
        if self.embedding_mode == "constrained":
            x = self.item_scores.embed(item_ids)
        else:
            x = self.input_embedding(item_ids)
        return self.embedding_dropout(x, training=training)

    def step(self, item_ids, states, training=False):
        """One GRU step: item indices [B] and states -> (output [B, H], new states)."""
        return self.gru(self.embed(item_ids, training=training), states, training=training)

    def score_all(self, hidden):
        """Scores of every item [B, n_items] for GRU outputs [B, H] (no final activation:
        it is monotone and would only create ties)."""
        return self.item_scores(hidden)

    def call(self, item_ids, training=False):
        """Scores [B, n_items] after one item [B] from a zero state (first event of a session)."""
        states = self.gru.initial_states(ops.shape(item_ids)[0])
        hidden, _ = self.step(item_ids, states, training=training)
        return self.score_all(hidden)

    # ----------------------------------------------------------------- training
    def _activate(self, scores):
        if self.final_act == "tanh":
            return ops.tanh(scores)
        if self.final_act == "elu":
            return ops.elu(scores, alpha=self.elu_param)
        return scores

    def sampled_loss(self, hidden, targets, valid, negatives=None):
        """Per-event loss [B] over the in-batch targets plus the extra negatives.

        hidden [B, H], targets int [B], valid float [B], negatives int [S] or None.
        """
        batch = ops.shape(targets)[0]
        columns = targets if negatives is None else ops.concatenate([targets, negatives])
        scores = self.item_scores.sampled(hidden, columns)  # (B, C)
        if self.logq > 0:  # before the final activation, as in the original
            log_q = ops.take(self.log_support, columns)  # (C,)
            if negatives is not None:
                n_sample = ops.shape(negatives)[0]
                scale = ops.concatenate([ops.ones((batch,)),
                                         ops.full((n_sample,), self.sample_alpha)])
                log_q = log_q * scale
            scores = scores - self.logq * log_q
        scores = self._activate(scores)
        column_valid = valid if negatives is None else ops.concatenate(
            [valid, ops.ones((ops.shape(negatives)[0],))])
        if self.loss_name == "cross-entropy":
            return losses.cross_entropy_over_columns(scores, column_valid)
        if self.loss_name == "bpr-max":
            return losses.bpr_max_over_columns(scores, column_valid, self.bpreg)
        eye = ops.eye(batch, ops.shape(columns)[0])
        positive = ops.diagonal(scores[:, :batch])
        mask = column_valid[None, :] * (1.0 - eye)
        return self.loss_fn(positive, scores, mask)

    def get_config(self):
        config = super().get_config()
        config.update({
            "n_items": self.n_items, "layers": self.layer_sizes, "embedding": self.embedding,
            "constrained_embedding": self.constrained_embedding,
            "dropout_p_embed": self.dropout_p_embed, "dropout_p_hidden": self.dropout_p_hidden,
            "loss": self.loss_name, "final_act": self.final_act, "bpreg": self.bpreg,
            "elu_param": self.elu_param, "logq": self.logq, "sample_alpha": self.sample_alpha,
            "batch_size": self.batch_size, "gru_cell": self.gru_cell, "seed": self.seed,
        })
        return config

    @classmethod
    def from_config(cls, config):
        # Saved before the cell became an option: those models were all reset-before.
        return super().from_config({"gru_cell": "reset-before", **config})
