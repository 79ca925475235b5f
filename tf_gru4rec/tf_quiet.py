"""Hide TensorFlow's C++ start-up lines from the command line's stderr.

Importing TensorFlow 2.21 on a CPU-only machine writes, from C++, "All log messages before
absl::InitializeLog() is called are written to STDERR", the oneDNN notice and "Could not find
cuda drivers" (twice: two of its shared libraries log them), and on its first device lookup
"E0000 ... failed call to cuInit". The first three are written before TensorFlow reads
``TF_CPP_MIN_LOG_LEVEL``, so no environment variable hides them. `hide_startup_lines`
therefore sets ``TF_CPP_MIN_LOG_LEVEL=2`` (later INFO and WARNING lines) and installs an
import hook: the first ``import tensorflow`` (by whichever module) runs with file descriptor 2
sent to a temporary file, together with the device lookup, and fd 2 is restored right after.
What was captured is written to stderr if the import fails. Only the import itself is
redirected; every later line of TensorFlow's (errors included) reaches stderr as usual.

`deprecation_notices_hidden` hides TensorFlow's deprecation notices around the calls we make
on purpose (the serving loader is TF Serving's v1 one): a user cannot act on them.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import logging
import os
import sys
import tempfile


@contextlib.contextmanager
def stderr_captured():
    """File descriptor 2 (C, C++ and Python writes) goes to a temporary file; yields it."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield capture
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


@contextlib.contextmanager
def deprecation_notices_hidden():
    """TensorFlow's Python logger (where "... is deprecated and will be removed" notices go,
    at WARNING) shows only errors inside the block."""
    tf_logger = logging.getLogger("tensorflow")
    level = tf_logger.level
    tf_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        tf_logger.setLevel(level)


def import_tensorflow_quietly():
    """Import TensorFlow and look its devices up with fd 2 captured; returns the module. On
    failure the captured lines are written to stderr and the error propagates."""
    with stderr_captured() as capture:
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # the cuInit line comes here
        except BaseException:
            ok = False
        else:
            ok = True
        capture.seek(0)
        captured = capture.read()
    if not ok:
        sys.stderr.buffer.write(captured)
        sys.stderr.flush()
        import tensorflow as tf  # raises the import error again, now visible
    return tf


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        uninstall()
        module = import_tensorflow_quietly()
        self._spec = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self._spec  # the import system set ours; the module is loaded


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        return importlib.machinery.ModuleSpec(name, _Loader())


_FINDER = _Finder()


def hide_startup_lines() -> None:
    """Set TF_CPP_MIN_LOG_LEVEL=2 (unless set), make the first TensorFlow import quiet, and
    keep TensorFlow's Python INFO lines (each collective of `--workers`, the strategy's
    set-up) out of our INFO log: its warnings and errors still show."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    if "tensorflow" not in sys.modules and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
    """Remove the import hook (no-op when absent)."""
    with contextlib.suppress(ValueError):
        sys.meta_path.remove(_FINDER)
