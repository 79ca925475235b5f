"""Training: the loop of every scale (`loop`, over the block engine in `distributed`), its
callbacks (validation ranking, backups and resume, progress), building and saving models.

The names of the former module `tf_gru4rec.training` (`train`, `build_model`,
`save_model_dir`, ...) are importable from here; they load on first use, so importing one
submodule does not import the others.
"""

from __future__ import annotations

import importlib

_NAMES = {
    "make_optimizer": "build", "momentum_refused": "build", "build_model": "build",
    "compile_model": "build",
    "TrainResult": "run", "train": "run", "run_fingerprint": "run",
    "save_model_dir": "model_dir", "TrainedModel": "model_dir", "load_model_dir": "model_dir",
}
__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
