"""Optional extras: which one a command needs, said in one line before any work starts.

`serving` (grpcio, tensorflow-serving-api) for `export` (warmup requests), `serve`, `replay`
and `demo`; `research` (optuna, tensorboard) for `tune` and `train --tensorboard`; `scale`
(duckdb) for `prepare log --shards`.
"""

from __future__ import annotations

import importlib.util

# Top-level module -> (pip package, extra).
MODULES = {
    "grpc": ("grpcio", "serving"),
    "tensorflow_serving": ("tensorflow-serving-api", "serving"),
    "optuna": ("optuna", "research"),
    "tensorboard": ("tensorboard", "research"),
    "duckdb": ("duckdb", "scale"),
}


class MissingExtra(ValueError):
    """A command needs a package of an extra that is not installed."""


def message(what: str, module: str) -> str:
    """'<what> needs <package> (the <extra> extra): pip install "tf-gru4rec[<extra>]"'."""
    package, extra = MODULES[module]
    return (f"{what} needs {package} (the {extra} extra), which is not installed: "
            f'pip install "tf-gru4rec[{extra}]"')


def require(what: str, *modules: str) -> None:
    """Raise `MissingExtra` naming the first of `modules` that cannot be imported."""
    for module in modules:
        if _missing(module):
            raise MissingExtra(message(what, module))


def explain(error: ModuleNotFoundError) -> str | None:
    """The one-line message for a missing module of an extra (None for any other module)."""
    top = (error.name or "").partition(".")[0]
    return message("this command", top) if top in MODULES else None


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):  # a parent missing, or a module without a spec
        return True
