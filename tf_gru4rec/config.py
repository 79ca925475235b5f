"""Training configuration with the original GRU4Rec parameter names, and presets."""

from __future__ import annotations

import dataclasses
import json
import os
from importlib import resources

PRESET_DIR = "presets"


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run. Names follow the original GRU4Rec."""

    loss: str = "cross-entropy"
    layers: list = dataclasses.field(default_factory=lambda: [100])
    batch_size: int = 32
    dropout_p_embed: float = 0.0
    dropout_p_hidden: float = 0.0
    learning_rate: float = 0.05
    momentum: float = 0.0
    n_sample: int = 2048
    sample_alpha: float = 0.5
    bpreg: float = 0.0
    logq: float = 0.0
    elu_param: float = 0.0
    final_act: str | None = None
    constrained_embedding: bool = True
    embedding: int = 0
    # "reset-after": torch.nn.GRUCell, as the official PyTorch port; "reset-before": the
    # 2016 paper's GRU. A one-hot first layer is reset-before either way (see GRUStack).
    gru_cell: str = "reset-after"
    n_epochs: int = 10
    optimizer: str = "adagradm"  # or any Keras optimizer name, e.g. "adam"
    shuffle_sessions: bool = False
    jit_compile: bool = True  # XLA: each block of training steps is one compiled program
    steps_per_execution: int = 50  # steps per block, run in one TensorFlow call
    # Several replicas: "step" sums their gradients every step (one process's maths);
    # "block" averages their models after each block (tf_gru4rec.training.averaging);
    # "overlap" as "block", the average travelling while the next block trains.
    sync: str = "step"
    # How the sessions are dealt to several replicas (tf_gru4rec.data.replica_split):
    # "interleaved", session s to replica s % R; "balanced", so that the replicas' passes end
    # together when a long late session would leave one running alone (fewer steps per epoch,
    # unequal data per replica: BENCHMARKS.md, "Shard tails").
    replica_split: str = "interleaved"
    seed: int = 0
    eval_batch_size: int = 0  # 0: sized to keep the slots full (evaluation_steps)
    cutoffs: list = dataclasses.field(default_factory=lambda: [1, 5, 10, 20])
    tie_mode: str = "conservative"

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"Unknown parameter(s) {unknown}; known: {sorted(names)}")
        config = cls()
        return config.with_overrides(values)

    def with_overrides(self, values: dict) -> TrainConfig:
        """A copy with `values` applied; strings are parsed to each field's type."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        changes = {}
        for key, value in values.items():
            if key not in fields:
                raise ValueError(f"Unknown parameter {key!r}; known: {sorted(fields)}")
            changes[key] = _parse(key, value, getattr(self, key))
        return dataclasses.replace(self, **changes)


def _parse(key, value, current):
    if not isinstance(value, str):
        return list(value) if isinstance(current, list) else value
    text = value.strip()
    try:
        if isinstance(current, bool):
            if text.lower() in ("1", "true", "yes"):
                return True
            if text.lower() in ("0", "false", "no"):
                return False
            raise ValueError(text)
        if isinstance(current, list):
            return [int(x) for x in text.replace("/", ",").split(",") if x]
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if current is None and key == "final_act":
            return None if text.lower() in ("", "none") else text
    except ValueError:
        expected = "integers like 100 or 100/100" if isinstance(current, list) else (
            "true or false" if isinstance(current, bool) else f"a {type(current).__name__}")
        raise ValueError(f"Parameter {key!r} expects {expected}; received {value!r}") from None
    return text


def preset_names() -> list[str]:
    files = resources.files("tf_gru4rec").joinpath(PRESET_DIR).iterdir()
    return sorted(f.name.removesuffix(".json") for f in files if f.name.endswith(".json"))


def load_preset(name_or_path: str) -> TrainConfig:
    """A preset by name (see `preset_names()`) or a JSON file of parameters."""
    if os.path.exists(name_or_path):
        with open(name_or_path) as f:
            return TrainConfig.from_dict(json.load(f))
    path = resources.files("tf_gru4rec").joinpath(PRESET_DIR, f"{name_or_path}.json")
    if not path.is_file():
        raise ValueError(f"Unknown preset {name_or_path!r}; presets: {preset_names()}")
    return TrainConfig.from_dict(json.loads(path.read_text()))
