"""Checks of user-given paths by kind, directories written all at once, and `fsync`.

Each check raises `ValueError("<option> <path>: <what is wrong>; expected <what>")` before any
work starts, so a bad path never costs a training run.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile

MODEL_FILES = ("config.json", "model.json", "vocabulary.json", "model.weights.h5")


def check_input_file(path: str, option: str, expected: str = "a click log file") -> str:
    """`path` exists, is a regular file, is readable and is not empty."""
    where = f"{option} {path!r}"
    if not os.path.exists(path):
        raise ValueError(f"{where} does not exist; expected {expected}")
    if os.path.isdir(path):
        raise ValueError(f"{where} is a directory; expected {expected}")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{where} is not readable (permissions); expected {expected}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{where} is an empty file; expected {expected}")
    return path


def check_model_dir(path: str, option: str = "--model") -> str:
    """`path` is a readable trained model directory (see `tf_gru4rec.training`)."""
    expected = "a model directory written by `tf-gru4rec train`"
    where = f"{option} {path!r}"
    if not os.path.exists(path):
        raise ValueError(f"{where} does not exist; expected {expected}")
    if not os.path.isdir(path):
        raise ValueError(f"{where} is a file; expected {expected}")
    missing = [n for n in MODEL_FILES if not os.path.isfile(os.path.join(path, n))]
    if missing:
        raise ValueError(f"{where} has no {', '.join(missing)}; expected {expected}")
    for name in MODEL_FILES:
        check_input_file(os.path.join(path, name), option, expected)
    return path


def check_output_dir(path: str, option: str = "--out", replaceable: bool = False) -> str:
    """`path` is a directory or can be created as one, in a writable place. `replaceable`: an
    existing `path` must be empty or a model directory (it will be replaced as a whole)."""
    where = f"{option} {path!r}"
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{where} is a file; expected a directory to write to")
    if (replaceable and os.path.isdir(path) and os.listdir(path)
            and not os.path.isfile(os.path.join(path, "config.json"))):
        raise ValueError(f"{where} is a directory with other content; expected a new or empty "
                         "directory, or a model directory to replace")
    parent = _existing_ancestor(path)
    if not os.path.isdir(parent):
        raise ValueError(f"{where}: {parent!r} is a file; expected a directory to write to")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{where}: {parent!r} is not writable; expected a writable directory")
    return path


def check_output_file(path: str, option: str = "--out") -> str:
    """`path` is a file (or absent) in a writable directory."""
    if os.path.isdir(path):
        raise ValueError(f"{option} {path!r} is a directory; expected a file to write")
    check_output_dir(os.path.dirname(os.path.abspath(path)), option)
    return path


def _existing_ancestor(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


@contextlib.contextmanager
def atomic_directory(path: str):
    """Yields a temporary directory beside `path`; on success it replaces `path` (which keeps
    its previous content if anything fails: no half-written directory)."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # as os.makedirs would (mkdtemp makes it private)
    try:
        yield staging
        old = None
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old.", dir=parent)
            os.replace(path, os.path.join(old, "previous"))
        os.replace(staging, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def fsync(path: str) -> None:
    """Flush a file or a directory (its entries: a rename in it) to disk; file systems that
    cannot fsync a directory are tolerated."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)
