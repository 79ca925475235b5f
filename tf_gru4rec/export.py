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
import json
import logging
import os
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from tf_gru4rec.serving_graph import SIGNATURES, WARMUP_SESSION, ServingLimits, ServingModule

logger = logging.getLogger(__name__)

WARMUP_FILE = "tf_serving_warmup_requests"
VOCAB_ASSET = "items.txt"
EXPORT_INFO = "tf_gru4rec.json"


# ---------------------------------------------------------------------- export
def export_model(model, vocabulary, base_path: str, version: int | None = None, k: int = 20,
                 exclude_seen: bool = False, session_capacity: int = 100_000,
                 session_idle_seconds: float = 1800.0, popular_items=None, warmup: bool = True,
                 max_seen: int = 100, limits: ServingLimits | None = None) -> str:
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
        memory), enforced inside the graph; default `ServingLimits()`.

    The version is written to a temporary directory beside `base_path` and renamed into place,
    so a server polling `base_path` never sees a partial version.
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
    os.makedirs(base_path, exist_ok=True)
    version = next_version(base_path) if version is None else _positive_int("version", version)
    final = os.path.join(base_path, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"Version {version} already exists: {final}")
    parent, name = os.path.split(base_path)
    staging = tempfile.mkdtemp(prefix=f".{name}-{version}-", dir=parent)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            vocab_file = os.path.join(scratch, VOCAB_ASSET)
            with open(vocab_file, "w", encoding="utf-8", newline="\n") as f:
                f.write("".join(s + "\n" for s in strings))
            module = ServingModule(model, vocab_file, k, popular, exclude_seen, max_seen,
                                   session_capacity, session_idle_seconds, limits)
            write_saved_model(module, staging)
        extra = os.path.join(staging, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        info = {
            "format": "tf_gru4rec.export/1", "version": version, "k": k,
            "exclude_seen": bool(exclude_seen), "max_seen": max_seen,
            "session_capacity": module.session_capacity,
            "limits": dataclasses.asdict(module.limits),
            "session_idle_seconds": float(session_idle_seconds),
            "layers": list(model.layer_sizes), "state_size": int(sum(model.layer_sizes)),
            "n_items": int(model.n_items), "signatures": list(SIGNATURES),
            "popular_items": [strings[i] for i in popular], "created": time.time(),
        }
        with open(os.path.join(extra, EXPORT_INFO), "w") as f:
            json.dump(info, f, indent=2)
        if warmup:
            write_warmup_requests(os.path.join(extra, WARMUP_FILE), strings[popular[0]],
                                  info["state_size"], exclude_seen)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
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


def write_warmup_requests(path: str, item_id: str, state_size: int, exclude_seen: bool,
                          model_name: str = "") -> int:
    """Write PredictionLog warmup records exercising every signature once (batch 1), except
    `session_count`, which has no inputs (a request TF Serving's warmup need not accept).

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
