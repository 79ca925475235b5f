"""Training progress in session-parallel steps, with the epoch's total known from the start.

`fit` sees blocks of `steps_per_execution` steps of a dataset of unknown length, so Keras'
own bar counts blocks and shows "Unknown" on the first epoch. `StepProgress` counts the steps
instead (their number per epoch is known before the epoch starts), so the bar has a total
and an ETA from the first block. With `verbose="auto"` the bar is drawn only on a terminal;
written to a file or a pipe (a log) the progress is one plain line per epoch, not thousands
of characters of redrawn bar with colour codes.
"""

from __future__ import annotations

import sys

import keras
from keras.src.utils import io_utils  # as Keras' own ProgbarLogger prints


class StepProgress(keras.callbacks.Callback):
    """A Keras progress bar of training steps (verbose 1) or one line per epoch (verbose 2).

    Args:
      source: the training loop's `LoopPosition` (`tf_gru4rec.training.loop`; steps done, steps per
        epoch, None when unknown), or a `SessionParallelInput` under `fit` (steps per epoch,
        block size).
      epochs: epochs of the run (for the "Epoch e/E" line).
      verbose: 1 (a bar updated each block), 2 (a line at each epoch end) or "auto" (1 when
        standard output, where Keras prints, is a terminal, else 2).
    """

    def __init__(self, source, epochs: int, verbose: int | str = 1):
        super().__init__()
        self.source = source
        self.epochs = int(epochs)
        self.verbose = resolve_verbosity(verbose)
        self.bar = None
        self.done = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.total = self.source.steps_per_epoch(epoch)
        self.done = self._clip(self.source.skip_steps)  # a resumed half-done epoch
        if self.epochs > 1:
            io_utils.print_msg(f"Epoch {epoch + 1}/{self.epochs}")
        self.bar = keras.utils.Progbar(self.total, verbose=self.verbose, unit_name="step",
                                       stateless_metrics=set())
        if self.done:
            self.bar.update(self.done)

    def on_train_batch_end(self, batch, logs=None):
        if hasattr(self.source, "state"):  # the training loop counts its steps
            self.done = self._clip(self.source.step)
        else:
            self.done = self._clip(self.done + self.source.steps_per_block)
        if self.verbose == 1:
            self.bar.update(self.done, list((logs or {}).items()), finalize=False)

    def on_epoch_end(self, epoch, logs=None):
        if self.total is None:  # Parquet shards: the length is known now
            self.bar.target = self.total = self.done
        self.bar.update(self.total, list((logs or {}).items()), finalize=True)

    def _clip(self, steps: int) -> int:
        return steps if self.total is None else min(steps, self.total)


def resolve_verbosity(verbose: int | str) -> int:
    """`verbose` as 0, 1 or 2; "auto" is 1 (a bar) on a terminal, else 2 (a line per epoch)."""
    if verbose != "auto":
        return int(verbose)
    isatty = getattr(sys.stdout, "isatty", None)
    return 1 if isatty is not None and isatty() else 2
