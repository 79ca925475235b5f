"""Crash-resume: a run killed mid-training and restarted from its backup equals an
uninterrupted run (weights, optimizer state, hidden state, dropout stream, input position,
loss history). The real-process kills (SIGKILL) are in test_resume_kill.py."""

import os

import h5py
import keras
import numpy as np
import pytest

from tf_gru4rec.config import TrainConfig
from tf_gru4rec.data.session_log import SessionLog
from tf_gru4rec.training import train
from tf_gru4rec.training.resume import LATEST

CONFIG = TrainConfig(layers=[8], batch_size=8, n_sample=6, learning_rate=0.1, momentum=0.2,
                     n_epochs=3, steps_per_execution=4, seed=5)
DROPOUT = CONFIG.replace(dropout_p_embed=0.2, dropout_p_hidden=0.3, n_epochs=2)


class CrashAt(keras.callbacks.Callback):
    """Raises at the start of epoch `epoch` or, with `batch`, at the end of that batch."""

    def __init__(self, epoch, batch=None):
        super().__init__()
        self.at, self.epoch = (epoch, batch), None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        if self.at == (epoch, None):
            raise KeyboardInterrupt("simulated crash")

    def on_train_batch_end(self, batch, logs=None):
        if self.at == (self.epoch, batch):
            raise KeyboardInterrupt("simulated crash")


@pytest.fixture(scope="module")
def small_log(synthetic_log):
    """The first 400 sessions of the synthetic log (~40 blocks of 4 steps per epoch)."""
    _, vocab, events = synthetic_log
    first = events["SessionId"].drop_duplicates().iloc[:400]
    return SessionLog.from_events(events[events["SessionId"].isin(first)], vocab)


def assert_same_run(reference, resumed):
    for want, got in zip(reference.model.weights, resumed.model.weights, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-6, err_msg=got.path)
    pairs = zip(reference.model.optimizer.variables, resumed.model.optimizer.variables,
                strict=True)
    for want, got in pairs:
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-6, err_msg=got.path)
    np.testing.assert_allclose(resumed.history["loss"], reference.history["loss"], rtol=1e-6)
    assert resumed.train_events == reference.train_events


def test_resumed_run_equals_uninterrupted_run(small_log, tmp_path):
    log = small_log
    reference = train(CONFIG, log, verbose=0)
    backup = str(tmp_path / "backup")
    with pytest.raises(KeyboardInterrupt):
        train(CONFIG, log, callbacks=[CrashAt(2)], verbose=0, backup_dir=backup)
    resumed = train(CONFIG, log, verbose=0, backup_dir=backup)
    assert_same_run(reference, resumed)
    assert resumed.resumes == 1
    assert not os.path.exists(backup)  # removed once training finished


def test_mid_epoch_resume_with_dropout_equals_uninterrupted_run(small_log, tmp_path):
    log = small_log
    reference = train(DROPOUT, log, verbose=0)
    backup = str(tmp_path / "backup")
    with pytest.raises(KeyboardInterrupt):  # backups after blocks 1 and 3 of epoch 2
        train(DROPOUT, log, callbacks=[CrashAt(1, 5)], verbose=0, backup_dir=backup,
              backup_every=8)
    with h5py.File(os.path.join(backup, LATEST)) as f:
        assert '"epoch": 1, "step": 16' in f["resume"].attrs["meta"]
    resumed = train(DROPOUT, log, verbose=0, backup_dir=backup, backup_every=8)
    assert_same_run(reference, resumed)
    assert len(resumed.history["loss"]) == 2


def test_backup_of_another_run_is_refused(small_log, tmp_path):
    log = small_log
    backup = str(tmp_path / "backup")
    with pytest.raises(KeyboardInterrupt):
        train(CONFIG, log, callbacks=[CrashAt(1)], verbose=0, backup_dir=backup)
    with pytest.raises(ValueError, match="another run.*learning_rate"):
        train(CONFIG.replace(learning_rate=0.2), log, verbose=0, backup_dir=backup)
