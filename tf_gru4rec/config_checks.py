"""Range checks of a `TrainConfig`: every parameter against what training can use.

`check_config` raises `ValueError("<name> should be <expected>. Received: <value>")` for the
first bad parameter, before anything is built or trained.
"""

from __future__ import annotations

import math

LOSSES = ("cross-entropy", "bpr-max", "top1-max", "bpr", "top1")
FINAL_ACTIVATIONS = (None, "linear", "tanh", "elu")
GRU_CELLS = ("reset-after", "reset-before")
TIE_MODES = ("standard", "conservative", "median")
SYNC_MODES = ("step", "block", "overlap")  # TrainConfig.sync, `train --sync`
REPLICA_SPLITS = ("interleaved", "balanced")  # TrainConfig.replica_split
_ADAGRADM = ("adagradm", "adagrad-momentum")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _integer(low):
    return lambda v: _is_int(v) and v >= low, f"an integer >= {low}"


def _number(low, high=None, low_open=False, high_open=False):
    def ok(v):
        return _is_number(v) and (v > low if low_open else v >= low) and (
            high is None or (v < high if high_open else v <= high))

    if high is None:
        return ok, f"a number {'>' if low_open else '>='} {low}"
    return ok, (f"a number in {'(' if low_open else '['}{low}, {high}"
                f"{')' if high_open else ']'}")


def _one_of(options):
    return lambda v: v in options, "one of " + ", ".join(str(o) for o in options)


def _sizes(v) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(_is_int(u) and u >= 1 for u in v)


CHECKS = {
    "loss": _one_of(LOSSES),
    "gru_cell": _one_of(GRU_CELLS),
    "layers": (_sizes, "layer sizes >= 1, e.g. 100 or 100/100"),
    "batch_size": _integer(1),
    "dropout_p_embed": _number(0, 1, high_open=True),
    "dropout_p_hidden": _number(0, 1, high_open=True),
    "learning_rate": _number(0, low_open=True),
    "momentum": _number(0, 1, high_open=True),
    "n_sample": _integer(0),
    "sample_alpha": _number(0, 1),
    "bpreg": _number(0),
    "logq": _number(0),
    "elu_param": _number(0),
    "final_act": _one_of(FINAL_ACTIVATIONS),
    "constrained_embedding": (lambda v: isinstance(v, bool), "true or false"),
    "embedding": _integer(0),
    "n_epochs": _integer(1),
    "optimizer": (lambda v: isinstance(v, str) and _optimizer_known(v),
                  "adagradm or a Keras optimizer name (adam, sgd, adagrad, ...)"),
    "shuffle_sessions": (lambda v: isinstance(v, bool), "true or false"),
    "jit_compile": (lambda v: isinstance(v, bool), "true or false"),
    "steps_per_execution": _integer(1),
    "sync": _one_of(SYNC_MODES),
    "replica_split": _one_of(REPLICA_SPLITS),
    "seed": _integer(0),
    "eval_batch_size": _integer(0),
    "cutoffs": (_sizes, "cutoffs >= 1, e.g. 1,5,10,20"),
    "tie_mode": _one_of(TIE_MODES),
}


def _optimizer_known(name: str) -> bool:
    if name.lower() in _ADAGRADM:
        return True
    import keras

    try:
        keras.optimizers.get(name)
    except ValueError:
        return False
    return True


def _takes_momentum(name: str) -> bool:
    """Whether the optimizer `name` has a momentum (adagradm; Keras' sgd, rmsprop)."""
    if name.lower() in _ADAGRADM:
        return True
    import keras

    return "momentum" in keras.optimizers.get(name).get_config()


def check_config(config) -> None:
    """Raise ValueError naming the first parameter of `config` out of its range, or a
    momentum > 0 for an optimizer that has none (it would be ignored)."""
    for key, value in config.to_dict().items():
        ok, expected = CHECKS.get(key, (lambda v: True, ""))
        if not ok(value):
            raise ValueError(f"Parameter {key!r} should be {expected}. Received: {value!r}")
    if config.momentum and not _takes_momentum(config.optimizer):
        from tf_gru4rec.training.build import momentum_refused

        raise ValueError(momentum_refused(config.optimizer, config.momentum))


def check_replica_split(config, n_replicas: int) -> None:
    """`replica_split="balanced"` evens out the replicas' passes over the sessions in
    start-time order, by giving the replicas unequal shares of the events; with
    `shuffle_sessions` each replica's order changes every epoch, so the even passes are lost
    and the unequal shares make the longest pass longer than the interleaved deal's."""
    if n_replicas > 1 and config.replica_split == "balanced" and config.shuffle_sessions:
        raise ValueError(
            "replica_split='balanced' with shuffle_sessions=True: the balanced deal ends the "
            "replicas' passes together in start-time order by giving them unequal shares of "
            "the events, and shuffling each replica's sessions every epoch loses the first "
            "but keeps the second (trivago, 2 workers: the longest pass of 20 shuffled epochs "
            "was 920 steps at the median and up to 1,274, against 899 and up to 1,154 with "
            "the interleaved deal; benchmarks/shard_tails.py --shuffled-epochs); expected "
            "replica_split='interleaved' with shuffle_sessions, or shuffle_sessions=False")


def check_backup_every(config, backup_every: int) -> None:
    """Mid-epoch backups (`backup_every` steps) need a run model that holds the whole state
    at every block boundary, which `sync="overlap"` does not have."""
    if backup_every and config.sync == "overlap":
        raise ValueError(
            f"--backup-every {backup_every} with sync='overlap': between epoch ends each "
            "worker's model carries progress that the others receive one block later, which "
            "a backup of the run's model cannot hold, so a mid-epoch backup could not resume "
            "exactly; expected backups at epoch ends only (--backup-dir without "
            "--backup-every), or sync='block'")
