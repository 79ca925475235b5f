"""A SavedModel version loaded the way TensorFlow Serving loads it.

TF Serving never rebuilds the Python object graph (`tf.saved_model.load`). Its session-based
loader imports the MetaGraph tagged `serve` into a fresh graph, runs the saver's restore op on
`variables/`, runs the init op (`__saved_model_init_op`, which fills the lookup tables from the
assets), and then serves each request by feeding and fetching the tensors named in the
signature's SignatureDef. `tf.compat.v1.saved_model.loader.load` in a `tf.compat.v1.Session` is
that same path in Python (and `saved_model_cli run` uses it), so a version that works here
works in TF Serving, and one that fails here fails there. Requests run through the C++
session's callables (`Session::MakeCallable`), which, like TF Serving, feed tensors without
Python's check of their shapes against the placeholders: the graph checks ranks and shapes
itself, with the same messages here as on TF Serving (`tf_gru4rec.serving.capi` loads a
version through the C API to compare).
"""

from __future__ import annotations

import logging
import os
import threading

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import config_pb2

from tf_gru4rec.tf_quiet import deprecation_notices_hidden

logger = logging.getLogger(__name__)

WARMUP_PATH = os.path.join("assets.extra", "tf_serving_warmup_requests")


class SignatureError(ValueError):
    """A request that does not fit a signature (names, dtypes or shapes of its inputs)."""


class SessionBundle:
    """One SavedModel version in its own `tf.Graph` and `tf.compat.v1.Session`.

    Args:
      path: the version directory (`<base>/<version>/`).
      tags: the MetaGraph tags (TF Serving loads `serve`).

    `signature_defs` maps each signature name to its SignatureDef proto (the internal
    `__saved_model_init_op` entry left out); `run` serves one request. `run` may be called from
    several threads at once, as TF Serving does.
    """

    def __init__(self, path: str, tags=("serve",)):
        self.path = os.fspath(path)
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        try:
            with self.graph.as_default(), deprecation_notices_hidden():
                meta_graph = tf.compat.v1.saved_model.loader.load(
                    self.session, list(tags), self.path)
        except BaseException:
            self.session.close()
            raise
        self.signature_defs = {name: sig for name, sig in meta_graph.signature_def.items()
                               if not name.startswith("__")}
        self._callables: dict = {}
        self._callables_lock = threading.Lock()

    def input_infos(self, signature: str) -> dict:
        """Input name -> (numpy dtype, shape with None for unknown dimensions)."""
        return {key: _dtype_shape(info) for key, info in self._signature(signature).inputs.items()}

    def output_infos(self, signature: str) -> dict:
        """Output name -> (numpy dtype, shape with None for unknown dimensions)."""
        return {key: _dtype_shape(info)
                for key, info in self._signature(signature).outputs.items()}

    def check_inputs(self, signature: str, inputs: dict, cast_numbers: bool = False) -> dict:
        """Validate numpy inputs against the SignatureDef: exactly its input names and its
        dtypes (numbers are cast with `cast_numbers`, as TF Serving's REST API does for JSON).
        Shapes are the graph's to check. Returns the inputs ready to feed; raises
        `SignatureError`."""
        infos = self.input_infos(signature)
        if set(inputs) != set(infos):
            raise SignatureError(f"signature {signature!r} expects inputs {sorted(infos)}; "
                                 f"received {sorted(inputs)}")
        return {key: _check_input(signature, key, inputs[key], infos[key][0], cast_numbers)
                for key in infos}

    def run(self, signature: str, inputs: dict, output_filter=()) -> dict:
        """Run a signature on checked numpy inputs -> output name -> numpy array.

        Raises `SignatureError` for unknown signatures or outputs and `tf.errors.OpError` when
        the graph refuses the request (e.g. InvalidArgument from an assertion).
        """
        sig = self._signature(signature)
        unknown = set(output_filter) - set(sig.outputs)
        if unknown:
            raise SignatureError(f"output_filter names unknown outputs {sorted(unknown)} of "
                                 f"signature {signature!r}; outputs: {sorted(sig.outputs)}")
        wanted = tuple(output_filter) or tuple(sig.outputs)
        keys = tuple(inputs)
        unknown = set(keys) - set(sig.inputs)
        if unknown:
            raise SignatureError(f"signature {signature!r} has no inputs {sorted(unknown)}")
        run = self._callable(signature, keys, wanted)
        # Numbers converted to the signature's dtype, as Session.run converts feeds.
        dtypes = {key: _dtype_shape(sig.inputs[key])[0] for key in keys}
        values = run(*[np.asarray(inputs[key], dtype=None if dtypes[key] is object
                                  else dtypes[key]) for key in keys])
        return dict(zip(wanted, values, strict=True))

    def _callable(self, signature: str, keys: tuple, wanted: tuple):
        """The session's callable feeding `keys` and fetching `wanted` of a signature (made
        once per combination)."""
        with self._callables_lock:
            found = self._callables.get((signature, keys, wanted))
            if found is None:
                sig = self.signature_defs[signature]
                options = config_pb2.CallableOptions(
                    feed=[sig.inputs[key].name for key in keys],
                    fetch=[sig.outputs[key].name for key in wanted])
                found = self.session._make_callable_from_options(options)  # noqa: SLF001
                self._callables[(signature, keys, wanted)] = found
        return found

    def warmup_requests(self):
        """The (signature name, numpy inputs) of each predict record in
        `assets.extra/tf_serving_warmup_requests`, in file order (none if there is no file)."""
        from tensorflow_serving.apis import prediction_log_pb2

        path = os.path.join(self.path, WARMUP_PATH)
        if not os.path.exists(path):
            return
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            log = prediction_log_pb2.PredictionLog.FromString(record)
            if log.WhichOneof("log_type") != "predict_log":
                continue
            request = log.predict_log.request
            yield (request.model_spec.signature_name or "serving_default",
                   {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()})

    def warmup(self) -> int:
        """Run every warmup record once, in order, as TF Serving does before it makes a version
        available. Returns the number run; raises on the first that fails."""
        count = 0
        for signature, inputs in self.warmup_requests():
            try:
                self.run(signature, self.check_inputs(signature, inputs))
            except (SignatureError, tf.errors.OpError) as error:
                raise RuntimeError(f"warmup request {count + 1} ({signature}) failed: "
                                   f"{first_line(error)}") from error
            count += 1
        return count

    def close(self) -> None:
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _signature(self, name: str):
        try:
            return self.signature_defs[name]
        except KeyError:
            raise SignatureError(f"Serving signature name: \"{name}\" not found in signature "
                                 f"def; signatures: {sorted(self.signature_defs)}") from None


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message (TF errors add graph details after it)."""
    text = (getattr(error, "message", None) or str(error)).strip()
    for line in text.splitlines():
        if line.strip() and line.strip() != "Graph execution error:":
            return line.strip()
    return type(error).__name__


def _dtype_shape(info):
    shape = None if info.tensor_shape.unknown_rank else tuple(
        None if d.size < 0 else d.size for d in info.tensor_shape.dim)
    return tf.dtypes.as_dtype(info.dtype).as_numpy_dtype if info.dtype != types_pb2.DT_STRING \
        else object, shape


def _check_input(signature: str, key: str, value, dtype, cast_numbers: bool):
    value = np.asarray(value)
    if dtype is object:
        if value.dtype.kind not in "OSU":
            raise SignatureError(f"{signature}: input {key!r} should be string; received "
                                 f"{value.dtype}")
        if value.dtype.kind == "O" and not all(isinstance(v, (bytes, str))
                                               for v in value.ravel()):
            raise SignatureError(f"{signature}: input {key!r} should hold only strings")
    else:
        wrong = value.dtype != dtype if not cast_numbers else (
            value.dtype.kind not in "biuf"
            or not np.can_cast(value.dtype, dtype, casting="same_kind"))
        if wrong:
            raise SignatureError(f"{signature}: input {key!r} should be "
                                 f"{np.dtype(dtype).name}; received {value.dtype}")
        value = value.astype(dtype, copy=False)
    return value
