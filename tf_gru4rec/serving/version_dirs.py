"""Version directories under a TF Serving base path (`<base>/<version>/`), written atomically.

A version is staged in a hidden directory inside the base path
(`.tf_gru4rec-staging-<pid>@<host>-<random>/`, which TF Serving ignores: not a number), made
readable by all (directories at least 0755, files 0644, whatever the umask), fsynced and
renamed into place, so a server polling the base path never sees a partial version and a base
that is itself a mount point works. A staging directory is locked (`flock`) while its writer
runs; those left by killed writers are removed (`remove_stale_staging`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator

from tf_gru4rec.paths import fsync

# The export's logger, as before this module was split out of it: whoever tunes or filters
# the export's log lines (staging leftovers, renumbered versions) keeps doing so by that name.
logger = logging.getLogger("tf_gru4rec.export")

STAGING_PREFIX = ".tf_gru4rec-staging-"
STALE_STAGING_SECONDS = 3600.0  # see `remove_stale_staging`
_STAGING_NAME = re.compile(re.escape(STAGING_PREFIX) + r"(\d+)@(.*)-[^-]+$")
_LOCK_FILE = ".lock"


def prepare_base(base_path: str) -> str:
    """Create `base_path` (readable by all) if needed, remove the staging directories killed
    writers left in it, and return its absolute path."""
    base_path = os.path.abspath(os.fspath(base_path))
    makedirs_readable(base_path)
    remove_stale_staging(base_path)
    return base_path


def next_version(base_path: str) -> int:
    """One more than the largest numeric subdirectory of `base_path` (1 if none)."""
    versions = [int(n) for n in os.listdir(base_path)
                if n.isdigit() and os.path.isdir(os.path.join(base_path, n))]
    return max(versions, default=0) + 1


def taken_message(base_path: str, version: int) -> str:
    """The error message for an explicit `version` that exists in `base_path`."""
    return (f"Version {version} already exists in {base_path}: give another version, or none "
            f"for the next free one ({next_version(base_path)})")


@contextlib.contextmanager
def staging_directory(base_path: str) -> Iterator[str]:
    """A new staging directory inside `base_path`, locked while the block runs and removed
    (with whatever was not published from it) when it ends."""
    staging = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}@{host_name()}-",
                               dir=base_path)
    lock = _lock_staging(staging)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if lock is not None:
            os.close(lock)


def seal(root: str) -> None:
    """Make the staged version `root` readable by all and fsync it, before `publish`."""
    make_readable(root)
    fsync_tree(root)


def publish(staged: str, base_path: str, version: int, explicit: bool,
            renumber: Callable[[int], None]) -> tuple[str, int]:
    """Rename the complete version `staged` to `<base_path>/<version>`; returns its path and
    version.

    A number taken meanwhile (by a concurrent export) raises `FileExistsError` if it was asked
    for (`explicit`), or else moves on to the next free number, calling `renumber(number)`
    first (to rewrite what in `staged` names its version).
    """
    while True:
        final = os.path.join(base_path, str(version))
        if not os.path.lexists(final):
            try:
                os.rename(staged, final)
            except OSError as error:
                if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
            else:
                fsync(base_path)
                return final, version
        if explicit:
            raise FileExistsError(taken_message(base_path, version))
        taken = version
        version = max(taken + 1, next_version(base_path))
        logger.info("version %d was taken by another export meanwhile: using %d", taken,
                    version)
        renumber(version)


def remove_stale_staging(base_path: str, max_age: float = STALE_STAGING_SECONDS) -> list[str]:
    """Remove the staging directories that killed exports left in `base_path`; returns them.

    An export holds an exclusive `flock` on `<staging>/.lock` until it ends (the kernel drops
    it when the process dies, even by SIGKILL). A staging directory is left over when
    - its lock is free and it was made on this host (the host name is in its name), or
    - it has no lock (no lock file yet, or no locks on this file system), was made on this
      host and its process is gone, or
    - its lock is not held (free, or no lock) and it is older than `max_age` seconds: the only
      rule for another host's staging directory on a shared volume, whose lock may be local to
      that host (e.g. NFS mounted with `local_lock`).
    A held lock always keeps the directory: that export is running, however long it takes.
    Each removal is logged.
    """
    removed = []
    for name in sorted(os.listdir(base_path)):
        match = _STAGING_NAME.match(name)
        path = os.path.join(base_path, name)
        if not match or not os.path.isdir(path) or os.path.islink(path):
            continue
        reason = _staging_leftover(path, int(match.group(1)), match.group(2), max_age)
        if not reason:
            continue
        shutil.rmtree(path, ignore_errors=True)
        if os.path.lexists(path):
            logger.warning("cannot remove %s, left by an interrupted export (%s)", path, reason)
        else:
            logger.warning("removed %s, left by an interrupted export (%s)", path, reason)
            removed.append(path)
    return removed


def makedirs_readable(path: str) -> None:
    """`os.makedirs(path)`, with the directories it creates at least 0755 whatever the umask."""
    missing = []
    head = path
    while not os.path.isdir(head) and head != os.path.dirname(head):
        missing.append(head)
        head = os.path.dirname(head)
    os.makedirs(path, exist_ok=True)
    for created in reversed(missing):
        os.chmod(created, os.stat(created).st_mode | 0o755)
        fsync(os.path.dirname(created))


def make_readable(root: str) -> None:
    """Directories below `root` (and it) at least 0755, files at least 0644: a server running
    as another user reads the version whatever the exporter's umask (mkdtemp gives 0700)."""
    os.chmod(root, os.stat(root).st_mode | 0o755)
    for parent, dirs, files in os.walk(root):
        for name in dirs:
            path = os.path.join(parent, name)
            os.chmod(path, os.stat(path).st_mode | 0o755)
        for name in files:
            path = os.path.join(parent, name)
            os.chmod(path, os.stat(path).st_mode | 0o644)


def fsync_tree(root: str) -> None:
    """fsync every file and directory below `root`, children before their directory."""
    for parent, _, files in os.walk(root, topdown=False):
        for name in files:
            fsync(os.path.join(parent, name))
        fsync(parent)


def host_name() -> str:
    """This host's name as it appears in staging directory names."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:64] or "host"


def _staging_leftover(path: str, pid: int, host: str, max_age: float) -> str | None:
    """Why the staging directory `path` is a leftover, or None while its export may run."""
    try:
        fd = os.open(os.path.join(path, _LOCK_FILE), os.O_RDONLY)
    except OSError:
        fd = None
    locked = None  # unknown
    if fd is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = False
        except BlockingIOError:
            return None  # the export is running
        except OSError:
            pass  # no locks on this file system
        finally:
            os.close(fd)
    if host == host_name():
        if locked is False:
            return "its export no longer holds its lock"
        if not _pid_alive(pid):
            return f"process {pid} is gone"
    try:
        age = time.time() - os.stat(path).st_mtime
    except OSError:
        return None
    if age > max_age:
        return f"{age / 3600:.1f} h old"
    return None


def _lock_staging(staging: str) -> int | None:
    """Take the lock that marks `staging` as in use (None where the file system has none)."""
    fd = os.open(os.path.join(staging, _LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        logger.debug("no lock on %s (%s): leftovers are told by process id and age", staging,
                     error)
        os.close(fd)
        return None
    return fd


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True
