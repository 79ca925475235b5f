"""Train a GRU4Rec from a `TrainConfig` with the training loop of every scale
(`tf_gru4rec.training.loop`)."""

from __future__ import annotations

import dataclasses
import logging
import time

import keras

from tf_gru4rec.config import TrainConfig
from tf_gru4rec.config_checks import check_backup_every
from tf_gru4rec.data.distributed_input import TrainingSource
from tf_gru4rec.data.session_log import SessionLog
from tf_gru4rec.nn.model import GRU4Rec
from tf_gru4rec.training.distributed import DistributedTrainer
from tf_gru4rec.training.loop import TrainingLoop
from tf_gru4rec.training.progress import StepProgress
from tf_gru4rec.training.resume import TrainingBackup

logger = logging.getLogger(__name__)


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
    every scale (`tf_gru4rec.training.loop`), which drives `callbacks` as `fit` would.

    log: a `SessionLog`, or a `TrainingSource` (a log or Parquet shards).
    `model` continues training an existing model (compiled: with its optimizer state; under
    several replicas its weights are copied into a model built under the strategy); by default
    a new one is built. `backup_dir` backs the training state up at each epoch end (and every
    `backup_every` steps, rounded up to whole blocks of `config.steps_per_execution`); if it
    holds a backup of the same run, training resumes from it and ends as an uninterrupted run
    would (`tf_gru4rec.training.resume`). The backup is removed when training finishes.
    `strategy`: a `tf.distribute` strategy (None: one process, one device); `chief`: this
    worker writes the backups (every worker restores them, from storage they share).
    """
    check_backup_every(config, backup_every)
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
