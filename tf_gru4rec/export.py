"""Export a trained GRU4Rec as a TensorFlow Serving SavedModel version (`<base>/<version>/`).

The graph and its signatures are `tf_gru4rec.serving_graph.ServingModule` (see its module
docstring). It is written with Keras 3's `keras.export.ExportArchive`, which saves the
`tf.Variable`s the signatures actually read (and the lookup tables), so the version runs on
TensorFlow Serving's session-based loader (restore op, init op, SignatureDef tensor names) as
well as through `tf.saved_model.load`. A version is staged in a hidden directory inside the
base path and renamed into place: TF Serving never sees a partial version.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from tf_gru4rec.paths import fsync
from tf_gru4rec.serving_graph import (
    SIGNATURES,
    WARMUP_SESSION,
    ServingLimits,
    ServingModule,
    request_memory_bound,
)

logger = logging.getLogger(__name__)

WARMUP_FILE = "tf_serving_warmup_requests"
VOCAB_ASSET = "items.txt"
EXPORT_INFO = "tf_gru4rec.json"
STAGING_PREFIX = ".tf_gru4rec-staging-"
STALE_STAGING_SECONDS = 3600.0  # see `remove_stale_staging`
_STAGING_NAME = re.compile(re.escape(STAGING_PREFIX) + r"(\d+)@(.*)-[^-]+$")
_LOCK_FILE = ".lock"


# ---------------------------------------------------------------------- export
def export_model(model, vocabulary, base_path: str, version: int | None = None, k: int = 20,
                 exclude_seen: bool = False, session_capacity: int = 100_000,
                 session_idle_seconds: float = 1800.0, popular_items=None, warmup: bool = True,
                 max_seen: int = 100, limits: ServingLimits | None = None,
                 score_precision: str = "float32", score_shards: int = 2) -> str:
    """Write a new SavedModel version `<base_path>/<version>/` and return its path.

    Args:
      model: a built `GRU4Rec`.
      vocabulary: its `ItemVocabulary` (raw ids become strings with `as_strings()`).
      base_path: the model's base directory (as in a TF Serving model config).
      version: version number; default one more than the largest existing version (or 1).
      k: recommendations per request (at most the number of items).
      exclude_seen: never recommend items already clicked in the session.
      session_capacity: the most sessions the stateful signature keeps.
      session_idle_seconds: a session idle longer than this starts over and is removed.
      popular_items: raw ids, most popular first, recommended to sessions with no known item;
        default: the top of the model's item support (training counts), or of the item biases
        when the model has no support.
      warmup: write `assets.extra/tf_serving_warmup_requests`.
      max_seen: items remembered per session for `exclude_seen` in the stateful signature.
      limits: `ServingLimits` (rows per request, session id bytes, session length, session
        memory, scoring memory), enforced inside the graph; default `ServingLimits()`, whose
        row cap follows the catalogue (`ServingLimits.resolved`).
      score_precision: "float32" (exact, default), "bfloat16" or "int8" (per-row scale): the
        precision of the item table that scores all items (`ServingModule`).
      score_shards: row blocks of the item table scored in parallel (same results).

    The version is written to a hidden staging directory inside `base_path`
    (`.tf_gru4rec-staging-<pid>@<host>-<random>/`, which TF Serving ignores: not a number),
    made readable by all (directories at least 0755, files 0644, whatever the umask),
    fsynced and renamed into place, so a server polling `base_path` never sees a partial
    version and a base that is itself a mount point works. Without `version`, an export that
    finds its number taken at the rename (a concurrent export) takes the next free one; an
    explicit `version` that exists raises `FileExistsError`. Staging directories left by
    killed exports are removed first (see `remove_stale_staging`).
    """
    strings = _check_vocabulary(vocabulary, model.n_items)
    k = _positive_int("k", k)
    if k > model.n_items:
        raise ValueError(f"`k` should be at most the number of items ({model.n_items}). "
                         f"Received: {k}")
    session_capacity = _positive_int("session_capacity", session_capacity)
    max_seen = _positive_int("max_seen", max_seen)
    if not session_idle_seconds > 0:
        raise ValueError(f"`session_idle_seconds` should be positive. Received: "
                         f"{session_idle_seconds}")
    popular = _popular_indices(model, vocabulary, popular_items, k)

    base_path = os.path.abspath(os.fspath(base_path))
    _makedirs_readable(base_path)
    remove_stale_staging(base_path)
    explicit = version is not None
    version = _positive_int("version", version) if explicit else next_version(base_path)
    if explicit and os.path.lexists(os.path.join(base_path, str(version))):
        raise FileExistsError(_taken_message(base_path, version))
    staging = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}@{_host()}-",
                               dir=base_path)
    lock = _lock_staging(staging)
    try:
        vocab_file = os.path.join(staging, VOCAB_ASSET)  # scratch: copied into assets/
        with open(vocab_file, "w", encoding="utf-8", newline="\n") as f:
            f.write("".join(s + "\n" for s in strings))
        module = ServingModule(model, vocab_file, k, popular, exclude_seen, max_seen,
                               session_capacity, session_idle_seconds, limits,
                               score_precision, score_shards)
        staged = os.path.join(staging, "version")
        write_saved_model(module, staged)
        extra = os.path.join(staged, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        info = {
            "format": "tf_gru4rec.export/1", "version": version, "k": k,
            "exclude_seen": bool(exclude_seen), "max_seen": max_seen,
            "session_capacity": module.session_capacity,
            "limits": dataclasses.asdict(module.limits),
            "score_chunk_rows": module.chunk_rows,
            "request_memory_bytes": request_memory_bound(module.limits, model.n_items,
                                                         module.state_size, k),
            "score_precision": module.score_precision,
            "score_shards": len(module.shard_bounds) - 1,
            "session_idle_seconds": float(session_idle_seconds),
            "layers": list(model.layer_sizes), "state_size": int(sum(model.layer_sizes)),
            "n_items": int(model.n_items), "signatures": list(SIGNATURES),
            "popular_items": [strings[i] for i in popular], "created": time.time(),
        }
        _write_info(extra, info)
        if warmup:
            write_warmup_requests(os.path.join(extra, WARMUP_FILE), strings[popular[0]],
                                  info["state_size"], exclude_seen)
        _make_readable(staged)
        _fsync_tree(staged)
        final = _publish(staged, base_path, info, explicit)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if lock is not None:
            os.close(lock)
    version = info["version"]
    logger.info("exported version %d to %s (k=%d, exclude_seen=%s, %d items)", version, final, k,
                exclude_seen, model.n_items)
    return final


def write_saved_model(module: ServingModule, path: str) -> None:
    """Save `module`'s signatures with `keras.export.ExportArchive` to a new directory `path`.

    The archive tracks the `tf.Variable`s behind the Keras variables that the signatures read,
    and the lookup tables below `module`, so the saver's restore op reaches them (plain
    `tf.saved_model.save` of Keras 3 layers restores copies, and the session-based loader of
    TF Serving then fails with "Could not find variable").
    """
    archive = keras.export.ExportArchive()
    archive.track(module)
    for name in SIGNATURES:
        archive.add_endpoint(name, getattr(module, name))
    archive.write_out(path, verbose=False)


def next_version(base_path: str) -> int:
    """One more than the largest numeric subdirectory of `base_path` (1 if none)."""
    versions = [int(n) for n in os.listdir(base_path)
                if n.isdigit() and os.path.isdir(os.path.join(base_path, n))]
    return max(versions, default=0) + 1


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
    if host == _host():
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


def _publish(staged: str, base_path: str, info: dict, explicit: bool) -> str:
    """Rename the complete version `staged` to `<base_path>/<info["version"]>` and return it.

    A number taken meanwhile (by a concurrent export) raises `FileExistsError` if it was asked
    for, or else moves on to the next free number (rewriting the export info to match).
    """
    while True:
        final = os.path.join(base_path, str(info["version"]))
        if not os.path.lexists(final):
            try:
                os.rename(staged, final)
            except OSError as error:
                if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
            else:
                fsync(base_path)
                return final
        if explicit:
            raise FileExistsError(_taken_message(base_path, info["version"]))
        taken = info["version"]
        info["version"] = max(taken + 1, next_version(base_path))
        logger.info("version %d was taken by another export meanwhile: using %d", taken,
                    info["version"])
        extra = os.path.join(staged, "assets.extra")
        _write_info(extra, info)
        fsync(extra)


def _taken_message(base_path: str, version: int) -> str:
    return (f"Version {version} already exists in {base_path}: give another version, or none "
            f"for the next free one ({next_version(base_path)})")


def _write_info(extra: str, info: dict) -> None:
    path = os.path.join(extra, EXPORT_INFO)
    with open(path, "w") as f:
        json.dump(info, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def _makedirs_readable(path: str) -> None:
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


def _make_readable(root: str) -> None:
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


def _fsync_tree(root: str) -> None:
    """fsync every file and directory below `root`, children before their directory."""
    for parent, _, files in os.walk(root, topdown=False):
        for name in files:
            fsync(os.path.join(parent, name))
        fsync(parent)


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


def _host() -> str:
    """This host's name as it appears in staging directory names."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:64] or "host"


def write_warmup_requests(path: str, item_id: str, state_size: int, exclude_seen: bool,
                          model_name: str = "") -> int:
    """Write PredictionLog warmup records exercising every signature once (batch 1).

    The stateful requests use a reserved session id that the last record ends, so warmup
    leaves no session behind. Returns the number of records.
    """
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    def request(signature, **inputs):
        req = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
        for key, value in inputs.items():
            req.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        return prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=req))

    one = np.array([item_id], dtype=object)
    session = np.array([WARMUP_SESSION], dtype=object)
    step_inputs = {"item_id": one, "state": np.zeros((1, state_size), np.float32)}
    if exclude_seen:
        step_inputs["seen_item_ids"] = np.array([[""]], dtype=object)
    records = [
        request("serving_default", session_id=session, item_id=one),
        request("click", session_id=session, item_id=one, position=np.array([1], np.int64)),
        request("rank", session_id=session, item_id=one, target_item_id=one),
        request("step", **step_inputs),
        request("recommend", session_item_ids=np.array([["", item_id]], dtype=object)),
        request("lookup", item_id=one),
        request("session_count", probe=np.zeros(1, np.int32)),
        request("end_session", session_id=session),
    ]
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record.SerializeToString())
    return len(records)


def _check_vocabulary(vocabulary, n_items: int) -> list[str]:
    strings = vocabulary.as_strings()
    if len(strings) != n_items:
        raise ValueError(f"The vocabulary has {len(strings)} items, the model {n_items}")
    for s in strings:
        if s == "" or "\n" in s or "\r" in s:
            raise ValueError(f"Item ids must be non-empty single-line strings to be exported. "
                             f"Received: {s!r}")
    if len(set(strings)) != len(strings):
        raise ValueError("Item ids are not unique once written as strings")
    return strings


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"`{name}` should be a positive integer. Received: {value!r}")
    return int(value)


def _popular_indices(model, vocabulary, popular_items, k: int) -> np.ndarray:
    """int64 [k] item indices of the fallback recommendation."""
    if popular_items is not None:
        index_of = {s: i for i, s in enumerate(vocabulary.as_strings())}
        raw = [str(x) for x in list(popular_items)[:k]]
        idx = np.asarray([index_of.get(x, -1) for x in raw], dtype=np.int64)
        if len(idx) < k or (idx < 0).any():
            raise ValueError(f"`popular_items` should start with {k} (=k) item ids known to the "
                             f"model. Received {len(raw)} ids, {int((idx < 0).sum())} unknown")
        return idx
    support = np.asarray(model.log_support.numpy())
    if np.any(support > 0):
        key = support
    else:
        logger.warning("The model has no item support: falling back to the items with the "
                       "largest output biases")
        key = np.asarray(model.item_scores.item_bias.numpy())
    return np.argsort(-key, kind="stable")[:k].astype(np.int64)
