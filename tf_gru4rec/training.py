"""Build, train, save and load GRU4Rec models from a `TrainConfig` (`train`: the training
loop of every scale, `tf_gru4rec.loop`).

A trained model directory holds:
  config.json          the TrainConfig
  model.json           the Keras model config (GRU4Rec.get_config())
  vocabulary.json      raw item ids in index order
  model.weights.h5     the weights (item support for logQ included)
  metrics.json         written by the CLI after evaluation
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import keras

from tf_gru4rec.config import TrainConfig
from tf_gru4rec.data.session_log import SessionLog
from tf_gru4rec.data.vocabulary import ItemVocabulary
from tf_gru4rec.distributed_input import TrainingSource
from tf_gru4rec.model import GRU4Rec
from tf_gru4rec.optimizers import AdagradM
from tf_gru4rec.progress import StepProgress
from tf_gru4rec.resume import TrainingBackup

logger = logging.getLogger(__name__)


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


@dataclasses.dataclass
class TrainResult:
    """`history`, `train_seconds` and `train_events` describe the whole run, resumed or not;
    `resumes` counts the restarts from a backup; `steps_per_epoch` and `events_per_epoch` are
    counted by the loop (events: of all replicas together); `trainer` is the
    `DistributedTrainer` that ran it (its strategy, `gathered_digests`)."""

    model: GRU4Rec
    history: dict
    train_seconds: float
    train_events: int
    resumes: int = 0
    steps_per_epoch: list = dataclasses.field(default_factory=list)
    events_per_epoch: list = dataclasses.field(default_factory=list)
    trainer: object = None

    @property
    def events_per_second(self) -> float:
        return self.train_events / max(self.train_seconds, 1e-9)


def train(config: TrainConfig, log: SessionLog | TrainingSource, callbacks=(), verbose="auto",
          model: GRU4Rec | None = None, backup_dir: str | None = None,
          backup_every: int = 0, strategy=None, chief: bool = True) -> TrainResult:
    """Train on the sessions of `log` for `config.n_epochs` epochs with the training loop of
    every scale (`tf_gru4rec.loop`), which drives `callbacks` as `fit` would.

    log: a `SessionLog`, or a `TrainingSource` (a log or Parquet shards).
    `model` continues training an existing model (compiled: with its optimizer state; under
    several replicas its weights are copied into a model built under the strategy); by default
    a new one is built. `backup_dir` backs the training state up at each epoch end (and every
    `backup_every` steps, rounded up to whole blocks of `config.steps_per_execution`); if it
    holds a backup of the same run, training resumes from it and ends as an uninterrupted run
    would (`tf_gru4rec.resume`). The backup is removed when training finishes.
    `strategy`: a `tf.distribute` strategy (None: one process, one device); `chief`: this
    worker writes the backups (every worker restores them, from storage they share).
    """
    from tf_gru4rec.distributed import DistributedTrainer
    from tf_gru4rec.loop import TrainingLoop

    keras.utils.set_random_seed(config.seed)
    source = log if isinstance(log, TrainingSource) else TrainingSource(log=log)
    trainer = DistributedTrainer(config, source, strategy, model=model)
    loop = TrainingLoop(trainer, verbose=verbose)
    callbacks = list(callbacks)
    if backup_dir:
        loop.backup = TrainingBackup(backup_dir, loop.position, run_fingerprint(config, source),
                                     backup_every, with_metrics=False)
        if chief:
            callbacks.append(loop.backup)  # it records the logs the others have completed
    if verbose != 0:  # steps with a known total instead of Keras' blocks of unknown number
        callbacks.append(StepProgress(loop.position, config.n_epochs, verbose))
    loop.callbacks = callbacks
    logger.info("training on %d events, %d predictions per epoch (each event but its "
                "session's last; %s steps of %d slots on %d replicas), %d epochs",
                source.n_events, source.n_predictions, trainer.steps_per_epoch(0),
                config.batch_size, trainer.n_replicas, config.n_epochs)
    start = time.perf_counter()
    history = loop.run()
    steps, events = history.pop("steps"), history.pop("events")
    backup = loop.backup
    seconds = backup.elapsed() if backup is not None else time.perf_counter() - start
    if backup is not None and chief:
        backup.delete()
    epochs_run = len(history.get("loss", [])) or config.n_epochs
    return TrainResult(trainer.model, history, seconds, source.n_predictions * epochs_run,
                       backup.resumes if backup else 0, steps, events, trainer)


def run_fingerprint(config: TrainConfig, log) -> dict:
    """What a backup must match to be resumed: the training settings and the data's shape
    (`log`: a SessionLog, or anything with its n_events, n_sessions and n_items)."""
    settings = {k: v for k, v in config.to_dict().items()
                if k not in ("n_epochs", "cutoffs", "tie_mode", "eval_batch_size")}
    return {**settings, "n_events": log.n_events, "n_sessions": log.n_sessions,
            "n_items": log.n_items}


def save_model_dir(path: str, model: GRU4Rec, vocabulary: ItemVocabulary,
                   config: TrainConfig) -> None:
    """Write a trained model directory (see module docstring)."""
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
