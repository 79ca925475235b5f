"""Build and compile a GRU4Rec from a `TrainConfig` (its optimizer included)."""

from __future__ import annotations

import keras

from tf_gru4rec.config import TrainConfig
from tf_gru4rec.nn.model import GRU4Rec
from tf_gru4rec.nn.optimizers import AdagradM


def make_optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    """AdagradM (the original's optimizer) or any Keras optimizer by name, with the config's
    learning rate and momentum (an optimizer without a momentum refuses a momentum > 0)."""
    if config.optimizer.lower() in ("adagradm", "adagrad-momentum"):
        return AdagradM(config.learning_rate, config.momentum)
    optimizer = keras.optimizers.get(config.optimizer)
    options = {**optimizer.get_config(), "learning_rate": config.learning_rate}
    if "momentum" in options:
        options["momentum"] = config.momentum
    elif config.momentum:
        raise ValueError(momentum_refused(config.optimizer, config.momentum))
    return type(optimizer).from_config(options)


def momentum_refused(optimizer: str, momentum: float) -> str:
    """The error of a momentum given to an optimizer that has none."""
    return (f"Parameter 'momentum' is not used by optimizer {optimizer!r}, which has no "
            f"momentum. Received: {momentum!r}; set momentum=0, or choose adagradm, sgd or "
            "rmsprop")


def build_model(config: TrainConfig, n_items: int, item_support=None) -> GRU4Rec:
    """A built and compiled GRU4Rec for a catalogue of `n_items`."""
    model = GRU4Rec(
        n_items, layers=config.layers, embedding=config.embedding,
        constrained_embedding=config.constrained_embedding,
        dropout_p_embed=config.dropout_p_embed, dropout_p_hidden=config.dropout_p_hidden,
        loss=config.loss, final_act=config.final_act, bpreg=config.bpreg,
        elu_param=config.elu_param, logq=config.logq, sample_alpha=config.sample_alpha,
        batch_size=config.batch_size, gru_cell=config.gru_cell, seed=config.seed)
    model.build()
    if item_support is not None:
        model.set_item_support(item_support)
    return compile_model(model, config)


def compile_model(model: GRU4Rec, config: TrainConfig) -> GRU4Rec:
    """Compile with the config's optimizer; with `config.jit_compile` a whole block of
    training steps is one XLA program (`GRU4Rec.compile(step_compilation="full")`)."""
    model.compile(optimizer=make_optimizer(config),
                  step_compilation="full" if config.jit_compile else None)
    return model
