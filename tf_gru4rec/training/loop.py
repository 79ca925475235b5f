"""The training loop of every scale: epochs of blocks of steps, driving Keras callbacks.

`TrainingLoop` runs the epochs of a `DistributedTrainer` (`tf_gru4rec.training.distributed`: one
replica, or several under a `tf.distribute` strategy) and calls a `keras.callbacks.CallbackList`
around them as `fit` does (train begin and end, epoch begin and end, the end of each block as a
"batch"), so validation ranking (`RankingValidation`), `EarlyStopping`, `TensorBoard`, the
backups (`TrainingBackup`), the progress bar (`StepProgress`) and `--log-json` are the same
objects in one process and on every worker of a cluster. Under several workers each worker
runs the loop with the same callbacks, except those that only write (TensorBoard, JSON lines,
the backup file), which the caller gives to the chief alone: the epoch logs are identical on
every worker (the loss is summed over all replicas, the validation is run on every worker on
identical weights), so `EarlyStopping` stops every worker at the same epoch.

`LoopPosition` tells the callbacks where the loop is: the epoch, the blocks and steps done in
it, the loss so far; `TrainingBackup` saves it and a rerun resumes from it.
"""

from __future__ import annotations

import logging
import time

import keras

from tf_gru4rec.training.workers import thread_count

logger = logging.getLogger(__name__)


class LoopPosition:
    """Where the loop is: `epoch`, `blocks` and `step` (steps done in that epoch), `loss_sum`
    and `events` of the epoch so far, and the steps and events of the finished epochs.

    It also answers what `StepProgress` and `TrainingBackup` ask of their `source`:
    `steps_per_epoch(epoch)` (None when unknown), `steps_per_block` and `skip_steps` (the steps
    a resumed epoch starts with).
    """

    def __init__(self, trainer):
        self.trainer = trainer
        self.steps_per_block = trainer.config.steps_per_execution
        self.epoch = self.blocks = self.step = self.skip_steps = 0
        self.loss_sum = self.events = 0.0
        self.epoch_steps: list[int] = []
        self.epoch_events: list[int] = []

    def steps_per_epoch(self, epoch: int = 0) -> int | None:
        return self.trainer.steps_per_epoch(epoch)

    def state(self) -> dict:
        """JSON-able, for a backup."""
        return {"blocks": self.blocks, "loss_sum": self.loss_sum, "events": self.events,
                "epoch_steps": self.epoch_steps, "epoch_events": self.epoch_events}

    def restore(self, epoch: int, step: int, state: dict | None) -> None:
        state = state or {}
        self.epoch, self.step, self.skip_steps = epoch, step, step
        self.blocks = int(state.get("blocks", 0)) if step else 0
        self.loss_sum = float(state.get("loss_sum", 0.0)) if step else 0.0
        self.events = float(state.get("events", 0.0)) if step else 0.0
        self.epoch_steps = list(state.get("epoch_steps", []))
        self.epoch_events = list(state.get("epoch_events", []))


class TrainingLoop:
    """Trains `trainer.model` for `trainer.config.n_epochs` epochs (module docstring).

    Args:
      trainer: a `DistributedTrainer` (its model, block engine and data).
      callbacks: Keras callbacks; `TrainingBackup` and `StepProgress` should take
        `self.position` as their `source` (`tf_gru4rec.training.train` builds them so).
      backup: the run's `TrainingBackup` (also one of the callbacks, or not, on a worker that
        does not write): restored before the first step.
      verbose: passed to the callbacks' params.
    """

    def __init__(self, trainer, callbacks=(), backup=None, verbose=0):
        self.trainer = trainer
        self.model = trainer.model
        self.epochs = trainer.config.n_epochs
        self.position = LoopPosition(trainer)
        self.backup = backup
        self.callbacks = list(callbacks)
        self.history: dict = {}
        self.verbose = verbose

    def restore(self) -> None:
        """Restores the backup, if any, on every worker, and checks by digest that all
        workers hold the same state (a collective: the backup must be on shared storage)."""
        if self.backup is None:
            return
        point = self.backup.restore(self.model)
        if point is not None:
            self.position.restore(point.epoch, point.step, point.loop)
            self.history = {key: list(values) for key, values in point.history.items()}
        if self.trainer.n_replicas > 1:
            digests = self.trainer.gathered_digests()
            if len(set(digests)) != 1:
                raise ValueError(f"--backup-dir {self.backup.backup_dir!r}: the workers "
                                 "restored different states (some found no backup, or another "
                                 "one); expected a backup directory on storage every worker "
                                 "shares")

    def run(self) -> dict:
        """Trains the remaining epochs; returns the history: every epoch log ("loss", the
        validation metrics...) as a list, plus "steps" and "events" per epoch (events: trained
        on by all replicas together)."""
        self.restore()
        position, model = self.position, self.model
        record = _Record(self.history)  # last: the logs as every callback left them
        callbacks = keras.callbacks.CallbackList([*self.callbacks, record], model=model,
                                                 epochs=self.epochs, steps=None,
                                                 verbose=self.verbose)
        model.stop_training = False
        callbacks.on_train_begin()
        logs = {}
        for epoch in range(position.epoch, self.epochs):
            start = time.perf_counter()
            if epoch != position.epoch or not position.step:
                position.restore(epoch, 0, {"epoch_steps": position.epoch_steps,
                                            "epoch_events": position.epoch_events})
            callbacks.on_epoch_begin(epoch)
            for n_steps, loss_sum, events in self.trainer.train_epoch(epoch, position.blocks):
                position.blocks += 1
                position.step += n_steps
                position.loss_sum += loss_sum
                position.events += events
                callbacks.on_train_batch_end(position.blocks - 1, {"loss": self._loss()})
            position.epoch_steps.append(position.step)
            position.epoch_events.append(int(round(position.events)))
            logs = {"loss": self._loss()}
            seconds = time.perf_counter() - start
            callbacks.on_epoch_end(epoch, logs)
            logger.info("epoch %d/%d: loss %.4f, %d steps of %d replicas, %.0f events/s, "
                        "%s threads", epoch + 1, self.epochs, self._loss(), position.step,
                        self.trainer.n_replicas,
                        position.events / max(seconds, 1e-9), thread_count())
            if model.stop_training:
                break
        callbacks.on_train_end(record.last)
        return {**self.history, "steps": list(position.epoch_steps),
                "events": list(position.epoch_events)}

    def _loss(self) -> float:
        return self.position.loss_sum / max(self.position.events, 1.0)


class _Record(keras.callbacks.Callback):
    """Appends each epoch's logs (with what the callbacks before it added) to `history`."""

    def __init__(self, history: dict):
        super().__init__()
        self.history = history
        self.last: dict = {}

    def on_epoch_end(self, epoch, logs=None):
        self.last = dict(logs or {})
        for key, value in self.last.items():
            self.history.setdefault(key, []).append(float(value))
