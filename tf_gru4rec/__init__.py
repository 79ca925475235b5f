"""tf-gru4rec: GRU4Rec session-based recommendations in TensorFlow/Keras 3.

Modules that moved into a stage's subpackage (README, "How the code is laid out") stay
importable under their old names: `MOVED_MODULES` maps an old dotted name to the new one, and
importing the old name gives the very same module object (so classes, `isinstance` and Keras
registrations are shared) with a `DeprecationWarning` naming the new path (unless the importer
is a module of this package: those still on old names are ours to update). A moved package
takes its submodules along (`tf_gru4rec.layers.gru_stack` is `tf_gru4rec.nn.layers.gru_stack`).
The hook is defined here, not in a module of its own, so that importing `tf_gru4rec` loads no
other module of the package (and never TensorFlow).
"""

import importlib
import importlib.machinery
import importlib.util
import os
import sys
import warnings

__version__ = "0.1.0"

_PACKAGE_DIR = os.path.dirname(__file__) + os.sep

# Old dotted name -> new dotted name.
MOVED_MODULES = {
    "tf_gru4rec.input_pipeline": "tf_gru4rec.data.input_pipeline",
    "tf_gru4rec.session_parallel": "tf_gru4rec.data.session_parallel",
    "tf_gru4rec.sampling": "tf_gru4rec.data.sampling",
    "tf_gru4rec.layers": "tf_gru4rec.nn.layers",
    "tf_gru4rec.losses": "tf_gru4rec.nn.losses",
    "tf_gru4rec.optimizers": "tf_gru4rec.nn.optimizers",
    "tf_gru4rec.xla_flags": "tf_gru4rec.nn.xla_flags",
    "tf_gru4rec.metrics": "tf_gru4rec.evaluation.metrics",
    "tf_gru4rec.baselines": "tf_gru4rec.evaluation.baselines",
    "tf_gru4rec.export": "tf_gru4rec.serving.export",
    "tf_gru4rec.model": "tf_gru4rec.nn.model",
    "tf_gru4rec.block_training": "tf_gru4rec.nn.block_training",
    "tf_gru4rec.distributed_input": "tf_gru4rec.data.distributed_input",
    "tf_gru4rec.loop": "tf_gru4rec.training.loop",
    "tf_gru4rec.distributed": "tf_gru4rec.training.distributed",
    "tf_gru4rec.callbacks": "tf_gru4rec.training.callbacks",
    "tf_gru4rec.resume": "tf_gru4rec.training.resume",
    "tf_gru4rec.progress": "tf_gru4rec.training.progress",
    "tf_gru4rec.workers": "tf_gru4rec.training.workers",
    "tf_gru4rec.warm_start": "tf_gru4rec.training.warm_start",
    "tf_gru4rec.tuning": "tf_gru4rec.training.tuning",
    "tf_gru4rec.reproduce": "tf_gru4rec.training.reproduce",
    "tf_gru4rec.cli_train": "tf_gru4rec.cli.train",
    "tf_gru4rec.cli_common": "tf_gru4rec.cli.common",
    "tf_gru4rec.cli_types": "tf_gru4rec.cli.types",
    "tf_gru4rec.cli_baselines": "tf_gru4rec.cli.baselines",
    "tf_gru4rec.cli_prepare": "tf_gru4rec.cli.prepare",
    "tf_gru4rec.cli_research": "tf_gru4rec.cli.research",
    "tf_gru4rec.cli_serving": "tf_gru4rec.cli.serving",
    "tf_gru4rec.results_table": "tf_gru4rec.cli.results_table",
}
# `tf_gru4rec.training` and `tf_gru4rec.cli` became packages of the same names, which export
# the former modules' public names.


def _new_name(name: str) -> str | None:
    """The new dotted name of `name` if it or a package above it moved, else None."""
    if name in MOVED_MODULES:
        return MOVED_MODULES[name]
    head, _, tail = name.rpartition(".")
    new_head = _new_name(head) if head.startswith("tf_gru4rec.") else None
    return f"{new_head}.{tail}" if new_head else None


def _importer() -> tuple[str, int]:
    """The file of the code doing the import, and the `warnings.warn` stacklevel that points at
    it, seen from `_MovedLoader.create_module`. `warnings` does not count the import system's
    own frames (file name with "importlib" and "_bootstrap"); `importlib.import_module`'s and
    this module's are counted and passed over."""
    frame, level = sys._getframe(2), 1  # level 1: create_module
    while frame is not None:
        name = frame.f_code.co_filename
        if not ("importlib" in name and "_bootstrap" in name):
            level += 1
            if name not in (importlib.__file__, __file__):
                return name, level
        frame = frame.f_back
    return "", 1


class _MovedLoader:
    """Loads an old name as the module at its new name (imported under that name)."""

    def __init__(self, new: str):
        self.new = new

    def create_module(self, spec):
        importer, stacklevel = _importer()
        # Not for this package's own modules (those not moved yet still use some old names):
        # the warning is for code outside, and `python -m tf_gru4rec.cli` runs cli/__main__.py as
        # __main__, where Python shows DeprecationWarnings by default.
        if not importer.startswith(_PACKAGE_DIR):
            warnings.warn(f"{spec.name} is deprecated: it moved to {self.new}; import that "
                          "instead", DeprecationWarning, stacklevel=stacklevel)
        module = importlib.import_module(self.new)
        self._spec = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self._spec  # the import system set the old name's spec on it


class _MovedFinder:
    """`sys.meta_path` finder for the names in `MOVED_MODULES` (and their submodules)."""

    def find_spec(self, name, path=None, target=None):
        new = _new_name(name) if name.startswith("tf_gru4rec.") else None
        if new is None or importlib.util.find_spec(new) is None:
            return None
        return importlib.machinery.ModuleSpec(name, _MovedLoader(new))


if not any(type(finder).__qualname__ == "_MovedFinder" for finder in sys.meta_path):
    # First, so that a moved package's submodules are not found again, under the old name,
    # by the path finder through the package's `__path__`.
    sys.meta_path.insert(0, _MovedFinder())
