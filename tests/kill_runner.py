"""Runs `tf-gru4rec` and SIGKILLs it at a chosen moment (used by test_resume_kill.py).

KILL_AT=batch:EPOCH:BATCH  kill at the end of that training batch (0-based; before the backup
                           that batch may trigger).
KILL_AT=write:N            kill in the middle of the N-th `save_weights` (a backup write): the
                           file being written is left with half its bytes.
"""

import os
import signal
import sys

import keras

from tf_gru4rec import cli, training


def _die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class _KillAtBatch(keras.callbacks.Callback):
    def __init__(self, epoch, batch):
        super().__init__()
        self.at, self.epoch = (epoch, batch), None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            _die()


def _install(spec: str) -> None:
    kind, *values = spec.split(":")
    if kind == "batch":
        real_train = training.train

        def train(*args, callbacks=(), **kwargs):
            kill = _KillAtBatch(int(values[0]), int(values[1]))
            return real_train(*args, callbacks=[*callbacks, kill], **kwargs)

        training.train = train
    elif kind == "write":
        real_save, calls = keras.Model.save_weights, []

        def save_weights(self, filepath, *args, **kwargs):
            real_save(self, filepath, *args, **kwargs)
            calls.append(filepath)
            if len(calls) == int(values[0]):
                size = os.path.getsize(filepath)
                with open(filepath, "r+b") as f:
                    f.truncate(size // 2)
                _die()

        keras.Model.save_weights = save_weights
    else:
        raise SystemExit(f"bad KILL_AT {spec!r}")


if __name__ == "__main__":
    _install(os.environ["KILL_AT"])
    sys.exit(cli.main(sys.argv[1:]))
