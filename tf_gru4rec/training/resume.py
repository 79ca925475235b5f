"""Exact crash-resume for `tf_gru4rec.training.train`: one atomic file holds the whole state.

Keras' `BackupAndRestore` comes close but is not enough here: it writes `latest.weights.h5` in
place (a kill during the write leaves a truncated file on which every rerun fails), it does not
save `SeedGenerator` states (the dropout masks would differ after a resume), and it restarts a
mid-epoch backup from the start of the epoch. `TrainingBackup` writes, per backup, one file:
the weights and optimizer state (Keras `save_weights`) plus a `resume` group with the dropout
seed states, the running loss metric, the position (epoch, and steps of that epoch done, always
a block boundary so the negatives of the next block are keyed as in an uninterrupted run), the
training time so far and the history of the finished epochs. It is written to a temporary file
in the backup directory, fsynced, and renamed over the previous one (`os.replace`, atomic on
POSIX): a kill at any moment leaves either the previous backup or the new one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time

import h5py
import keras
import numpy as np

from tf_gru4rec.paths import fsync

logger = logging.getLogger(__name__)

LATEST = "latest.weights.h5"
PARTIAL = "partial.weights.h5"  # being written; never read


@dataclasses.dataclass
class ResumePoint:
    """Where a restored run continues: `step` steps of epoch `epoch` (0-based) are done."""

    epoch: int
    step: int
    seconds: float
    history: dict
    resumes: int
    loop: dict | None = None  # `LoopPosition.state()` of `tf_gru4rec.training.loop`


class TrainingBackup(keras.callbacks.Callback):
    """Backs up the training state at each epoch end (and every `every_steps` steps, rounded up
    to whole blocks), atomically; `restore` loads it before `fit`.

    Args:
      backup_dir: directory of the backup (created; `delete` removes it).
      source: what is being trained on: the training loop's `LoopPosition`
        (`tf_gru4rec.training.loop`: steps done, block size, epoch lengths; its `state()` is
        saved with the backup and given back in `ResumePoint.loop`), or a
        `SessionParallelInput` under Keras `fit`.
      fingerprint: JSON-able description of the run; a backup of another run is refused.
      every_steps: also back up mid-epoch after this many training steps (0: epoch ends only).
      with_metrics: also back up the metrics' running state (the loss of a half-done epoch),
        for `fit`. The training loop keeps its own loss in its position (under a strategy,
        reading a metric is an all-reduce, which the chief alone must not start).
    """

    def __init__(self, backup_dir: str, source, fingerprint: dict, every_steps: int = 0,
                 with_metrics: bool = True):
        super().__init__()
        if every_steps < 0:
            raise ValueError(f"`every_steps` should be >= 0. Received: {every_steps}")
        self.backup_dir = backup_dir
        self.source = source
        self.fingerprint = json.loads(json.dumps(fingerprint))
        self.every_steps = int(every_steps)
        self.with_metrics = bool(with_metrics)
        self.history: dict = {}
        self.resumes = 0
        self.base_seconds = 0.0
        self._t0 = time.perf_counter()
        self._epoch, self._step, self._saved_step = 0, 0, 0
        self._pending = None  # (epoch, step, metric values) to apply when that epoch begins

    @property
    def path(self) -> str:
        return os.path.join(self.backup_dir, LATEST)

    def elapsed(self) -> float:
        """Training seconds of the whole run: before the backup restored, and since."""
        return self.base_seconds + time.perf_counter() - self._t0

    # ----------------------------------------------------------------- restore
    def restore(self, model: keras.Model) -> ResumePoint | None:
        """Load the backup into `model` (built and compiled); None if there is none."""
        self.set_model(model)
        if not os.path.exists(self.path):
            return None
        try:
            with h5py.File(self.path, "r") as f:
                meta = json.loads(f["resume"].attrs["meta"])
                extra = [np.asarray(f["resume"][str(i)]) for i in range(len(meta["variables"]))]
        except (OSError, KeyError, ValueError) as error:
            raise ValueError(f"backup {self.path} cannot be read ({error}): delete it to start "
                             "over") from None
        if meta["fingerprint"] != self.fingerprint:
            changed = sorted(k for k in set(meta["fingerprint"]) | set(self.fingerprint)
                             if meta["fingerprint"].get(k) != self.fingerprint.get(k))
            raise ValueError(f"backup {self.path} is from another run ({', '.join(changed)} "
                             "differ): rerun the same command, or use another --backup-dir")
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(self.path)
        variables = self._extra_variables()
        if [list(v.shape) for v in variables] != meta["variables"]:
            raise ValueError(f"backup {self.path} does not match the model's state variables")
        n_seeds = len(variables) - len(self._metrics_variables())
        for variable, value in zip(variables[:n_seeds], extra[:n_seeds], strict=True):
            variable.assign(value)
        self._pending = (meta["epoch"], meta["step"], extra[n_seeds:])
        self.history = meta["history"]
        self.resumes = meta["resumes"] + 1
        self.base_seconds = meta["seconds"]
        self._t0 = time.perf_counter()
        logger.info("resuming from %s: epoch %d, step %d", self.path, meta["epoch"] + 1,
                    meta["step"])
        return ResumePoint(meta["epoch"], meta["step"], meta["seconds"], meta["history"],
                           self.resumes, meta.get("loop"))

    def _extra_variables(self) -> list:
        """State that `save_weights` leaves out: seed generators (dropout), then metrics."""
        saved = {id(v) for v in self.model.weights}
        metrics = {id(v) for v in self.model.metrics_variables}
        seeds = [v for v in self.model.variables if id(v) not in saved and id(v) not in metrics]
        return seeds + self._metrics_variables()

    def _metrics_variables(self) -> list:
        return list(self.model.metrics_variables) if self.with_metrics else []

    # ----------------------------------------------------------------- backup
    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._step, self._saved_step = epoch, 0, 0
        if self._pending is not None and self._pending[0] == epoch:
            _, self._step, metric_values = self._pending
            self._saved_step = self._step
            if self._step and self.with_metrics:  # the loss so far in this half-done epoch
                for variable, value in zip(self.model.metrics_variables, metric_values,
                                           strict=True):
                    variable.assign(value)
        self._pending = None

    def on_train_batch_end(self, batch, logs=None):
        n_steps = self.source.steps_per_epoch(self._epoch)
        if hasattr(self.source, "state"):  # the training loop counts its steps
            self._step = self.source.step
        else:
            self._step = min(self._step + self.source.steps_per_block, n_steps)
        if (self.every_steps and (n_steps is None or self._step < n_steps)
                and self._step - self._saved_step >= self.every_steps):
            self._save(self._epoch, self._step)
            self._saved_step = self._step

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        self._save(epoch + 1, 0)

    def _save(self, epoch: int, step: int) -> None:
        os.makedirs(self.backup_dir, exist_ok=True)
        partial = os.path.join(self.backup_dir, PARTIAL)
        self.model.save_weights(partial, overwrite=True)
        variables = self._extra_variables()
        meta = {"epoch": epoch, "step": step, "seconds": self.elapsed(),
                "history": self.history, "resumes": self.resumes,
                "fingerprint": self.fingerprint, "variables": [list(v.shape) for v in variables]}
        if hasattr(self.source, "state"):
            meta["loop"] = self.source.state()
        with h5py.File(partial, "r+") as f:
            group = f.create_group("resume")
            group.attrs["meta"] = json.dumps(meta)
            for i, variable in enumerate(variables):
                group.create_dataset(str(i), data=keras.ops.convert_to_numpy(variable))
        fsync(partial)
        os.replace(partial, self.path)
        fsync(self.backup_dir)

    def delete(self) -> None:
        """Remove the backup directory (after a finished run)."""
        shutil.rmtree(self.backup_dir, ignore_errors=True)
