"""Training telemetry: ranking metrics on a validation log at the end of each epoch, and
the epoch logs as JSON lines."""

from __future__ import annotations

import json
import logging

import keras
import tensorflow as tf

from tf_gru4rec.data.session_log import SessionLog
from tf_gru4rec.evaluation import evaluate
from tf_gru4rec.evaluation.metrics import check_tie_mode

logger = logging.getLogger(__name__)


class RankingValidation(keras.callbacks.Callback):
    """Recall@K and MRR@K of the model on `valid_log`, added to the epoch logs.

    At the end of every `every`-th epoch (and of the last one), the model being fitted is
    evaluated like `tf_gru4rec.evaluation.evaluate` (full catalogue, `tie_mode` ties) and
    `logs` gains `val_recall@K` and `val_mrr@K` for each K in `cutoffs`. Callbacks after this
    one in the `callbacks` list see them: `keras.callbacks.EarlyStopping(
    monitor="val_recall@20", mode="max")`, `TensorBoard` (as the validation scalars
    `epoch_recall@20`...), the progress bar and the `History` returned by `fit`. Put it
    first.

    Args:
      valid_log: validation sessions indexed with the model's vocabulary (items unknown to
        training dropped, sessions of >= 2 events).
      cutoffs: the K of Recall@K / MRR@K.
      tie_mode: "conservative" (default), "standard" or "median"; see
        `tf_gru4rec.evaluation.metrics`.
      every: evaluate every this many epochs (1: each epoch).
      batch_size: session-parallel slots of the evaluation (None: `evaluate`'s default).
      prefix: prefix of the log keys.

    Attributes:
      history: list of (epoch, {metric: value}) for the evaluated epochs (1-based epochs).
    """

    def __init__(self, valid_log: SessionLog, cutoffs=(20,), tie_mode: str = "conservative",
                 every: int = 1, batch_size: int | None = None, prefix: str = "val_"):
        super().__init__()
        if not isinstance(valid_log, SessionLog):
            raise ValueError(f"`valid_log` should be a SessionLog. Received: {type(valid_log)}")
        if valid_log.n_predictions == 0:
            raise ValueError("`valid_log` has no event with a next event to predict")
        self.valid_log = valid_log
        self.cutoffs = tuple(int(k) for k in cutoffs)
        if not self.cutoffs or min(self.cutoffs) < 1:
            raise ValueError(f"`cutoffs` should be positive integers. Received: {cutoffs!r}")
        self.tie_mode = check_tie_mode(tie_mode)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"`every` should be a positive int. Received: {every!r}")
        self.every = every
        self.batch_size = batch_size
        self.prefix = prefix
        self.history: list[tuple[int, dict]] = []

    def on_epoch_end(self, epoch, logs=None):
        last = self.params.get("epochs") if self.params else None
        if (epoch + 1) % self.every and epoch + 1 != last:
            return
        if self.valid_log.n_items != self.model.n_items:
            raise ValueError(f"The validation log indexes {self.valid_log.n_items} items, the "
                             f"model {self.model.n_items}: build it with the training vocabulary")
        if _weights_finite(self.model):
            result = evaluate(self.model, self.valid_log, self.cutoffs, self.tie_mode,
                              self.batch_size)
            metrics = {f"{self.prefix}{k}": float(v) for k, v in result.items() if "@" in k}
        else:  # NaN scores would tie with nothing and rank first: report NaN instead
            logger.warning("epoch %d: the model has non-finite weights; validation metrics "
                           "are NaN", epoch + 1)
            metrics = {f"{self.prefix}{m}@{k}": float("nan") for k in self.cutoffs
                       for m in ("recall", "mrr")}
        self.history.append((epoch + 1, metrics))
        if logs is not None:
            logs.update(metrics)
        logger.info("epoch %d validation: %s", epoch + 1,
                    ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))


def _weights_finite(model) -> bool:
    """True if every trainable weight of `model` is finite (checked on the device)."""
    return all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in model.trainable_variables)


class JsonLines(keras.callbacks.Callback):
    """Appends one JSON line per epoch to `path`: {"epoch": 1-based, every log as a float}."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        with open(self.path, "a") as f:
            f.write(json.dumps({"epoch": epoch + 1, **{k: float(v) for k, v in
                                                        (logs or {}).items()}}) + "\n")
