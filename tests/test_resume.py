"""Crash-resume: a run killed mid-training and restarted from its backup equals an
uninterrupted run (weights, optimizer state, hidden state and input position)."""

import keras
import numpy as np
import pytest

from tf_gru4rec.config import TrainConfig
from tf_gru4rec.training import train

CONFIG = TrainConfig(layers=[8], batch_size=8, n_sample=6, learning_rate=0.1, momentum=0.2,
                     n_epochs=3, steps_per_execution=4, seed=5)


class Crash(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            raise KeyboardInterrupt("simulated crash")


def test_resumed_run_equals_uninterrupted_run(synthetic_log, tmp_path):
    log = synthetic_log[0]
    reference = train(CONFIG, log, verbose=0).model
    backup = str(tmp_path / "backup")
    with pytest.raises(KeyboardInterrupt):
        train(CONFIG, log, callbacks=[keras.callbacks.BackupAndRestore(backup), Crash()],
              verbose=0)
    resumed = train(CONFIG, log, callbacks=[keras.callbacks.BackupAndRestore(backup)],
                    verbose=0)
    assert len(resumed.history["loss"]) == 1  # only the last epoch ran again
    for want, got in zip(reference.weights, resumed.model.weights, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-6, err_msg=got.path)
    pairs = zip(reference.optimizer.variables, resumed.model.optimizer.variables, strict=True)
    for want, got in pairs:
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-6, err_msg=got.path)
