"""Hyper-parameter search with Optuna over the original GRU4Rec's parameter names.

Each trial trains on a training log and is scored by Recall@20 (or MRR@20) on a validation log
that follows it in time (e.g. `train_tr` / `train_valid` from `tf-gru4rec prepare rsc15`):
never the test set. The study lives in an Optuna storage (`sqlite:///tune.db`), so rerunning
the same command continues it: `n_trials` is the total of finished trials the study should
have, and a trial left running by a crashed process is failed and retried (heartbeats).
The first trial of a new study is the base preset itself, so the best trial is never worse
on the validation split than the setting tuning started from.

  space = default_space("cross-entropy")
  study = tune(base_config, train_log, valid_log, space, n_trials=30,
               storage="sqlite:///tune.db", study_name="rsc15-xe")
  preset = best_preset(study, base_config)     # a dict for `--preset file.json`

Search space entries follow the original's paramspace files: {"name", "dtype": "int" |
"float" | "categorical", "values": [low, high] or the options, "step"}.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import warnings

import keras

from tf_gru4rec.config import TrainConfig
from tf_gru4rec.data.session_log import SessionLog
from tf_gru4rec.training.callbacks import RankingValidation
from tf_gru4rec.training.run import train

logger = logging.getLogger(__name__)

METRICS = ("recall@20", "mrr@20")
PRESET_KEYS = ("loss", "layers", "batch_size", "dropout_p_embed", "dropout_p_hidden",
               "learning_rate", "momentum", "n_sample", "sample_alpha", "bpreg", "logq",
               "elu_param", "final_act", "constrained_embedding", "embedding", "n_epochs")
# Parameters that only matter for some losses: skipped (kept at the base value) otherwise.
LOSS_ONLY = {"logq": ("cross-entropy",), "bpreg": ("bpr-max",), "elu_param": ("bpr-max",)}
LOSSES = ("cross-entropy", "bpr-max", "top1-max", "bpr", "top1")


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One searched parameter: `int`/`float` in [low, high] on a grid of `step` (None: any
    float), or one of `values` (`categorical`)."""

    name: str
    dtype: str
    values: tuple
    step: float | None = None

    def __post_init__(self):
        if self.name not in {f.name for f in dataclasses.fields(TrainConfig)}:
            raise ValueError(f"Unknown parameter {self.name!r} in the search space")
        if self.dtype not in ("int", "float", "categorical"):
            raise ValueError(f"`dtype` of {self.name!r} should be int, float or categorical. "
                             f"Received: {self.dtype!r}")
        if self.dtype != "categorical" and (len(self.values) != 2
                                            or not self.values[0] <= self.values[1]):
            raise ValueError(f"`values` of {self.name!r} should be [low, high]. "
                             f"Received: {list(self.values)}")
        if self.dtype == "categorical" and not self.values:
            raise ValueError(f"`values` of {self.name!r} should list the options")

    def suggest(self, trial):
        if self.dtype == "int":
            return trial.suggest_int(self.name, int(self.values[0]), int(self.values[1]),
                                     step=int(self.step or 1))
        if self.dtype == "float":
            value = trial.suggest_float(self.name, float(self.values[0]),
                                        float(self.values[1]), step=self.step)
            return round(value, 10)  # 0.30000000000000004 -> 0.3 (the grid's float sums)
        return trial.suggest_categorical(self.name, list(self.values))

    def contains(self, value) -> bool:
        """Whether `value` is one the spec can suggest (in range and on the grid)."""
        if self.dtype == "categorical":
            return value in self.values
        low, high = self.values
        if not low <= value <= high:
            return False
        step = self.step if self.step is not None else (1 if self.dtype == "int" else None)
        return step is None or abs((value - low) / step - round((value - low) / step)) < 1e-9

    def to_dict(self) -> dict:
        out = {"name": self.name, "dtype": self.dtype, "values": list(self.values)}
        if self.step is not None:
            out["step"] = self.step
        return out


def default_space(loss: str | None = "cross-entropy") -> list[ParamSpec]:
    """The default space: the ranges of the original's paramspace files, with layers capped at
    256 units and `n_sample` at 2048 so that a trial fits a laptop. `loss=None` searches the
    loss too (cross-entropy or bpr-max)."""
    space = [
        ParamSpec("layers", "int", (64, 256), 32),
        ParamSpec("batch_size", "int", (32, 256), 16),
        ParamSpec("learning_rate", "float", (0.01, 0.25), 0.005),
        ParamSpec("dropout_p_embed", "float", (0.0, 0.5), 0.05),
        ParamSpec("dropout_p_hidden", "float", (0.0, 0.7), 0.05),
        ParamSpec("momentum", "float", (0.0, 0.9), 0.05),
        ParamSpec("n_sample", "categorical", (0, 512, 1024, 2048)),
        ParamSpec("sample_alpha", "float", (0.0, 1.0), 0.1),
        ParamSpec("constrained_embedding", "categorical", (True, False)),
        ParamSpec("logq", "categorical", (0.0, 1.0)),
        ParamSpec("bpreg", "float", (0.0, 2.0), 0.05),
        ParamSpec("elu_param", "categorical", (0.0, 0.5, 1.0)),
    ]
    if loss is None:
        space.insert(0, ParamSpec("loss", "categorical", ("cross-entropy", "bpr-max")))
    return space


def load_space(path: str) -> list[ParamSpec]:
    """A search space file: a JSON list of entries, or one JSON entry per line (the original's
    paramspace format), each {"name", "dtype", "values", "step"?}."""
    with open(path) as f:
        text = f.read()
    try:
        entries = json.loads(text)
    except json.JSONDecodeError:
        entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(entries, dict):
        entries = [entries]
    space = []
    for entry in entries:
        unknown = set(entry) - {"name", "dtype", "values", "step"}
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {sorted(unknown)} in {entry}")
        space.append(ParamSpec(entry["name"], entry["dtype"], tuple(entry["values"]),
                               entry.get("step")))
    return space


def suggest_config(trial, base: TrainConfig, space: list[ParamSpec]) -> TrainConfig:
    """The base config with the trial's values for the searched parameters, skipping those
    that do not apply: `logq`, `bpreg`, `elu_param` to other losses, `sample_alpha` without
    samples, `dropout_p_hidden` without a layer to act on (one-hot input, one layer). The
    base trial (`tune`'s first) takes the base values off the grid as they are."""
    params = {}
    spec = {p.name: p for p in space}
    is_base = trial.user_attrs.get("base_preset", False)

    def value(p: ParamSpec):
        base_value = _base_value(base, p.name)
        if is_base and not p.contains(base_value):
            return base_value  # not suggested: Optuna would warn it is out of range
        return p.suggest(trial)

    if "loss" in spec:
        params["loss"] = value(spec["loss"])
    loss = params.get("loss", base.loss)
    late = ("loss", "sample_alpha", "dropout_p_hidden")
    for p in space:
        if p.name in late or loss not in LOSS_ONLY.get(p.name, (loss,)):
            continue
        params[p.name] = value(p)
    if "sample_alpha" in spec and params.get("n_sample", base.n_sample) > 0:
        params["sample_alpha"] = value(spec["sample_alpha"])  # unused without samples
    if "layers" in params:
        params["layers"] = [int(params["layers"])]
    if "dropout_p_hidden" in spec:
        if _hidden_dropout_acts(base.with_overrides(params)):
            params["dropout_p_hidden"] = value(spec["dropout_p_hidden"])
        else:
            params["dropout_p_hidden"] = 0.0  # no layer for it: the value does nothing
    return base.with_overrides(params)


def _hidden_dropout_acts(config: TrainConfig) -> bool:
    """False in one-hot mode (no embedding, not constrained) with one GRU layer: that
    layer's dropout is `dropout_p_embed` (see `GRU4Rec._layer_dropout`)."""
    one_hot = config.embedding == 0 and not config.constrained_embedding
    return not (one_hot and len(config.layers) == 1)


def _base_value(base: TrainConfig, name: str):
    value = getattr(base, name)
    return int(value[0]) if name == "layers" else value


class _PruningReport(keras.callbacks.Callback):
    """Reports the validation metric of each epoch to the trial; stops a pruned trial."""

    def __init__(self, trial, key: str):
        super().__init__()
        self.trial = trial
        self.key = key
        self.pruned = False

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.key)
        if value is None:
            return
        self.trial.report(float(value), epoch + 1)
        if self.trial.should_prune():
            self.pruned = True
            self.model.stop_training = True


def make_objective(base: TrainConfig, train_log: SessionLog, valid_log: SessionLog,
                   space: list[ParamSpec], metric: str = "recall@20", prune: bool = True):
    """The Optuna objective: train with the trial's config, return the validation `metric`
    after the last epoch (Recall@20 or MRR@20, conservative ties)."""
    import optuna

    if metric not in METRICS:
        raise ValueError(f"`metric` should be one of {METRICS}. Received: {metric!r}")

    def objective(trial):
        config = suggest_config(trial, base, space)
        trial.set_user_attr("config", {k: v for k, v in config.to_dict().items()
                                       if k in PRESET_KEYS})
        validation = RankingValidation(valid_log, (20,), config.tie_mode,
                                       every=1 if prune else config.n_epochs,
                                       batch_size=config.eval_batch_size)
        report = _PruningReport(trial, f"val_{metric}")
        try:
            result = train(config, train_log, verbose=0,
                           callbacks=[validation, report, keras.callbacks.TerminateOnNaN()])
        finally:
            keras.backend.clear_session()
        losses = result.history.get("loss", [])
        if not losses or not math.isfinite(losses[-1]):
            logger.warning("trial %d: the loss diverged (%s)", trial.number,
                           losses[-1] if losses else None)
            trial.set_user_attr("diverged", True)
            return float("nan")  # a failed trial for Optuna
        if report.pruned:
            raise optuna.TrialPruned(f"pruned after epoch {len(losses)}")
        epoch, metrics = validation.history[-1]
        trial.set_user_attr("val_recall@20", metrics["val_recall@20"])
        trial.set_user_attr("val_mrr@20", metrics["val_mrr@20"])
        trial.set_user_attr("train_seconds", result.train_seconds)
        return metrics[f"val_{metric}"]

    return objective


def open_study(study_name: str | None = None, storage: str | None = None, seed: int = 0,
               prune: bool = True):
    """Create or load (same name and storage) a maximising study with a seeded TPE sampler.

    With an RDB storage (e.g. "sqlite:///tune.db") trials send heartbeats; a trial whose
    process died is failed when the study is next used, and retried once with its parameters.
    """
    import optuna

    if storage and not isinstance(storage, str):
        raise ValueError(f"`storage` should be a URL string. Received: {storage!r}")
    if storage and storage.startswith(("sqlite", "postgresql", "mysql")):
        with warnings.catch_warnings():  # heartbeats are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                storage, heartbeat_interval=30, grace_period=90,
                heartbeat_stale_trial_callback=(
                    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)))
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
              if prune else optuna.pruners.NopPruner())
    return optuna.create_study(storage=storage, study_name=study_name, direction="maximize",
                               sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner,
                               load_if_exists=True)


def base_params(base: TrainConfig, space: list[ParamSpec]) -> dict:
    """The base config's values of the searched parameters, as the trial would suggest them
    (those off the search grid are left out: the base trial takes them as they are)."""
    values = {}
    for p in space:
        if base.loss not in LOSS_ONLY.get(p.name, (base.loss,)) or (
                p.name == "sample_alpha" and base.n_sample == 0) or (
                p.name == "dropout_p_hidden" and not _hidden_dropout_acts(base)):
            continue
        value = _base_value(base, p.name)
        if p.contains(value):
            values[p.name] = value
        else:
            logger.info("the base preset's %s=%s is off the search space %s: the base trial "
                        "uses it as it is, later trials search the space", p.name, value,
                        p.to_dict())
    return values


def finished_trials(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                    TrialState.FAIL))


def tune(base: TrainConfig, train_log: SessionLog, valid_log: SessionLog,
         space: list[ParamSpec], n_trials: int, study_name: str | None = None,
         storage: str | None = None, metric: str = "recall@20", timeout: float | None = None,
         seed: int = 0, prune: bool = True):
    """Run (or continue) a study until it has `n_trials` finished trials or `timeout` seconds
    have passed; returns the `optuna.Study`."""
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"`n_trials` should be a positive int. Received: {n_trials!r}")
    if valid_log.n_items != train_log.n_items:
        raise ValueError("The validation log should index items with the training vocabulary")
    study = open_study(study_name, storage, seed, prune)
    if not study.trials:
        study.enqueue_trial(base_params(base, space), user_attrs={"base_preset": True})
    done = len(finished_trials(study))
    remaining = n_trials - done
    logger.info("study %r: %d finished trials, running %d more (metric val_%s)",
                study.study_name, done, max(remaining, 0), metric)
    if remaining > 0:
        study.optimize(make_objective(base, train_log, valid_log, space, metric, prune),
                       n_trials=remaining, timeout=timeout, gc_after_trial=True)
    return study


def best_preset(study, base: TrainConfig) -> dict:
    """The best trial's full configuration as a preset dict (loadable by `load_preset`)."""
    config = study.best_trial.user_attrs.get("config")
    if config is None:  # a trial from elsewhere: rebuild from its parameters
        params = dict(study.best_trial.params)
        if "layers" in params:
            params["layers"] = [int(params["layers"])]
        config = base.with_overrides(params).to_dict()
    return {k: config[k] for k in PRESET_KEYS}


def summary(study, metric: str = "recall@20") -> dict:
    """JSON-ready summary: best value and parameters, the base preset's value, trial counts."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    states = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    base = next((t for t in trials if t.user_attrs.get("base_preset")
                 and t.state == TrialState.COMPLETE), None)
    best = study.best_trial
    seconds = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials
                  if t.datetime_complete and t.datetime_start)
    return {
        "study": study.study_name, "metric": f"val_{metric}",
        "best_value": best.value, "best_trial": best.number, "best_params": best.params,
        "best_val_mrr@20": best.user_attrs.get("val_mrr@20"),
        "best_val_recall@20": best.user_attrs.get("val_recall@20"),
        "base_trial": None if base is None else base.number,
        "base_value": None if base is None else base.value,
        "trials_better_than_base": None if base is None else sum(
            t.state == TrialState.COMPLETE and t.value > base.value for t in trials),
        "trials": {k: v for k, v in states.items() if v}, "trial_minutes": seconds / 60.0,
    }


def write_preset(preset: dict, path: str) -> None:
    """Write a preset JSON (creating its directory)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
        json.dump(preset, f, indent=2)
        f.write("\n")
