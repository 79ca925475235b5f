"""The development server's model versions and request handling shared by gRPC and REST.

`ModelManager` keeps the latest good version of a model loaded (`Servable`: a `SessionBundle`
and its version number); `decode_inputs`, `version_of`, `metadata_response` and
`status_response` turn TF Serving's protos into calls and answers; `RequestError` carries a
gRPC status code. `tf_gru4rec.serving.dev_server` (gRPC) and `tf_gru4rec.serving.rest` (REST)
both build on this module, which imports neither.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from tf_gru4rec.serving.bundle import SessionBundle, SignatureError, first_line

logger = logging.getLogger("tf_gru4rec.serving.dev_server")  # as before the split

GRPC_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Tensor dtypes a request may carry (the signatures take strings, floats and integers).
_REQUEST_DTYPES = {types_pb2.DT_STRING, types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE,
                   types_pb2.DT_INT32, types_pb2.DT_INT64, types_pb2.DT_BOOL}


class RequestError(Exception):
    """A request that cannot be served: `code` is a `grpc.StatusCode`."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Servable:
    """One loaded SavedModel version (`SessionBundle`) and its version number."""

    def __init__(self, path: str, version: int):
        self.path = path
        self.version = version
        self.bundle = SessionBundle(path)

    @property
    def signature_defs(self) -> dict:
        return self.bundle.signature_defs

    def run(self, signature_name: str, inputs: dict, output_filter=(),
            strict_dtypes: bool = True) -> dict:
        """Run a signature on numpy inputs -> name -> numpy output; raises `RequestError`.

        With `strict_dtypes` (gRPC, as TF Serving) numeric inputs must have the signature's
        dtype; otherwise (REST, JSON numbers) they are cast to it.
        """
        name = signature_name or "serving_default"
        try:
            feed = self.bundle.check_inputs(name, inputs, cast_numbers=not strict_dtypes)
            return self.bundle.run(name, feed, output_filter)
        except SignatureError as error:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None
        except tf.errors.OpError as error:
            raise RequestError(_grpc_code(error.error_code), first_line(error)) from None

    def warmup(self) -> int:
        return self.bundle.warmup()

    def session_count(self) -> int:
        """Sessions in the stateful signature's table (a test and monitoring aid)."""
        if "session_count" not in self.signature_defs:
            return -1
        probe = {"probe": np.zeros(1, np.int32)} \
            if self.signature_defs["session_count"].inputs else {}  # older exports: none
        return int(np.reshape(self.bundle.run("session_count", probe)["count"], -1)[0])

    def close(self) -> None:
        self.bundle.close()


def _grpc_code(tf_code: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == tf_code:
            return code
    return grpc.StatusCode.INTERNAL


class ModelManager:
    """Keeps the latest good version of one model loaded, optionally polling for new ones.

    A version that does not load or whose warmup fails is refused with one error log line and
    is not retried until a newer version appears; the loaded version keeps serving.
    """

    def __init__(self, base_path: str, model_name: str, warmup: bool = True):
        if not os.path.isdir(base_path):
            raise FileNotFoundError(f"Model base path not found: {base_path!r}")
        self.base_path = os.path.abspath(base_path)
        self.model_name = model_name
        self.warmup = warmup
        self._lock = threading.Lock()
        self._current: Servable | None = None
        self.refused: dict[int, str] = {}
        self.reload()
        if self._current is None:
            detail = "; ".join(f"version {v}: {why}" for v, why in sorted(self.refused.items()))
            raise FileNotFoundError(f"No loadable numeric version directory with a "
                                    f"saved_model.pb under {base_path!r}"
                                    + (f" ({detail})" if detail else ""))

    def latest_version_on_disk(self) -> int | None:
        versions = [int(n) for n in os.listdir(self.base_path) if n.isdigit() and
                    os.path.exists(os.path.join(self.base_path, n, "saved_model.pb"))]
        return max(versions, default=None)

    def reload(self) -> bool:
        """Load the latest version if it is newer than the loaded one; True if switched."""
        version = self.latest_version_on_disk()
        current = self._current
        if version is None or version in self.refused or (
                current is not None and current.version >= version):
            return False
        path = os.path.join(self.base_path, str(version))
        start = time.perf_counter()
        servable = None
        try:
            servable = Servable(path, version)
            n_warmup = servable.warmup() if self.warmup else 0
        except Exception as error:  # refuse this version, keep serving the current one
            if servable is not None:
                servable.close()
            self.refused[version] = first_line(error)
            logger.error("model %r version %d refused (%s): %s%s", self.model_name, version,
                         path, first_line(error),
                         f"; still serving version {current.version}" if current else "")
            return False
        with self._lock:
            self._current = servable
        logger.info("model %r version %d loaded from %s in %.2fs (%d warmup requests)",
                    self.model_name, version, servable.path, time.perf_counter() - start,
                    n_warmup)
        return True

    def get(self, name: str, version: int | None) -> Servable:
        if name != self.model_name:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: model {name!r} (this server "
                               f"serves {self.model_name!r})")
        with self._lock:
            servable = self._current
        if version is not None and version != servable.version:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: Specific({name}, {version}); "
                               f"loaded version: {servable.version}")
        return servable


def version_of(model_spec) -> int | None:
    if model_spec.HasField("version_label"):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           "version_label is not supported by the development server")
    return model_spec.version.value if model_spec.HasField("version") else None


def decode_inputs(request) -> dict:
    """A PredictRequest's TensorProtos -> name -> numpy array; raises `RequestError` for
    dtypes a signature never takes (DT_VARIANT, DT_RESOURCE, ...), negative or absurd
    dimensions, and content that does not match the shape."""
    inputs = {}
    for key, proto in request.inputs.items():
        if proto.dtype not in _REQUEST_DTYPES:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {key!r}: tensors of type "
                               f"{types_pb2.DataType.Name(proto.dtype)} are not accepted")
        dims = [d.size for d in proto.tensor_shape.dim]
        if any(d < 0 for d in dims):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {key!r}: negative dimension in shape {dims}")
        if int(np.prod(dims, dtype=np.float64)) > GRPC_MAX_MESSAGE_BYTES:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {key!r}: shape {dims} has more than "
                               f"{GRPC_MAX_MESSAGE_BYTES} elements")
        try:
            inputs[key] = tf.make_ndarray(proto)
        except (TypeError, ValueError) as error:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {key!r} is not a valid TensorProto: "
                               f"{first_line(error)}") from None
    return inputs


def metadata_response(name: str, servable: Servable):
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, value in servable.signature_defs.items():
        signature_map.signature_def[key].CopyFrom(value)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = name
    response.model_spec.version.value = servable.version
    response.metadata["signature_def"].Pack(signature_map)
    return response


def status_response(servable: Servable):
    response = get_model_status_pb2.GetModelStatusResponse()
    status = response.model_version_status.add()
    status.version = servable.version
    status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    return response
