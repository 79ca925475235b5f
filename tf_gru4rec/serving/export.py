"""Export a trained GRU4Rec as a TensorFlow Serving SavedModel version (`<base>/<version>/`).

The graph and its signatures are `tf_gru4rec.serving.graph.module.ServingModule` (see
`tf_gru4rec.serving.graph`). It is written with Keras 3's `keras.export.ExportArchive`, which
saves the `tf.Variable`s the signatures actually read (and the lookup tables), so the version
runs on TensorFlow Serving's session-based loader (restore op, init op, SignatureDef tensor
names) as well as through `tf.saved_model.load`. A version is staged in a hidden directory
inside the base path and renamed into place (`tf_gru4rec.serving.version_dirs`): TF Serving
never sees a partial version.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import keras
import numpy as np
import tensorflow as tf

from tf_gru4rec.paths import fsync
from tf_gru4rec.serving.graph.limits import ServingLimits, request_memory_bound
from tf_gru4rec.serving.graph.module import ServingModule
from tf_gru4rec.serving.graph.signatures import SIGNATURES, WARMUP_SESSION
from tf_gru4rec.serving.version_dirs import (  # noqa: F401 (the names export used to define)
    STAGING_PREFIX,
    STALE_STAGING_SECONDS,
    next_version,
    prepare_base,
    publish,
    remove_stale_staging,
    seal,
    staging_directory,
    taken_message,
)
from tf_gru4rec.serving.version_dirs import host_name as _host  # noqa: F401 (as before)

# The logger's name from before the move into a subpackage: whoever tunes or filters these
# log lines keeps doing so by that name.
logger = logging.getLogger("tf_gru4rec.export")

WARMUP_FILE = "tf_serving_warmup_requests"
VOCAB_ASSET = "items.txt"
EXPORT_INFO = "tf_gru4rec.json"


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

    base_path = prepare_base(base_path)
    explicit = version is not None
    version = _positive_int("version", version) if explicit else next_version(base_path)
    if explicit and os.path.lexists(os.path.join(base_path, str(version))):
        raise FileExistsError(taken_message(base_path, version))
    with staging_directory(base_path) as staging:
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
        seal(staged)

        def renumber(number: int) -> None:  # the version number taken: the next free one
            info["version"] = number
            _write_info(extra, info)
            fsync(extra)

        final, version = publish(staged, base_path, version, explicit, renumber)
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


def _write_info(extra: str, info: dict) -> None:
    path = os.path.join(extra, EXPORT_INFO)
    with open(path, "w") as f:
        json.dump(info, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


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
