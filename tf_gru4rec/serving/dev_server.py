"""A development server speaking TF Serving's gRPC API (and a little of its REST API).

This is a stand-in for TensorFlow Serving, for tests and for laptops without Docker: it is NOT
the product and not tuned for production (one Python process, the GIL, no batching, no model
config file, no monitoring). In production run the `tensorflow/serving` container from
`serving/` with the same SavedModel directory.

What it does, as TF Serving does:
  - loads the latest numeric version under a base path (`<base>/<version>/`) with TF Serving's
    own loading path (`tf_gru4rec.serving.bundle.SessionBundle`: the session-based loader,
    signatures run by their SignatureDef tensor names), replays the warmup records in
    `assets.extra/tf_serving_warmup_requests` and refuses a version whose warmup fails (the
    previous version keeps serving); with `poll_seconds` it switches to newer versions as they
    appear, and like TF Serving a new version starts with an empty session table;
  - `tensorflow.serving.PredictionService/Predict` and `GetModelMetadata`,
    `tensorflow.serving.ModelService/GetModelStatus` with the `tensorflow_serving.apis` protos;
  - REST (`tf_gru4rec.serving.rest`): `POST /v1/models/<name>[/versions/<v>]:predict`
    (columnar "inputs" or row "instances"), `GET /v1/models/<name>[/versions/<v>]` and
    `.../metadata`;
  - malformed requests get INVALID_ARGUMENT (HTTP 400), unknown models or versions NOT_FOUND,
    and the server keeps serving.
It binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tf_gru4rec.serving.bundle import SessionBundle, SignatureError, first_line

logger = logging.getLogger(__name__)

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


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager):
        self.manager = manager

    def Predict(self, request, context):
        try:
            servable = self.manager.get(request.model_spec.name, version_of(request.model_spec))
            outputs = servable.run(request.model_spec.signature_name, decode_inputs(request),
                                   list(request.output_filter))
        except RequestError as error:
            context.abort(error.code, error.message)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = request.model_spec.signature_name or "serving_default"
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response

    def GetModelMetadata(self, request, context):
        try:
            if list(request.metadata_field) != ["signature_def"]:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   "Metadata field must be exactly ['signature_def']; received "
                                   f"{list(request.metadata_field)}")
            servable = self.manager.get(request.model_spec.name, version_of(request.model_spec))
        except RequestError as error:
            context.abort(error.code, error.message)
        return metadata_response(request.model_spec.name, servable)

    def Classify(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Classify is not served; use Predict")

    def Regress(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Regress is not served; use Predict")

    def MultiInference(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "MultiInference is not served; use Predict")


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


class _ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager):
        self.manager = manager

    def GetModelStatus(self, request, context):
        try:
            servable = self.manager.get(request.model_spec.name, version_of(request.model_spec))
        except RequestError as error:
            context.abort(error.code, error.message)
        return status_response(servable)

    def HandleReloadConfigRequest(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      "The development server serves one model; restart it to change that")


# ---------------------------------------------------------------------- server
class DevServer:
    """The development server (see the module docstring).

    Args:
      base_path: the model's base directory holding numeric version subdirectories.
      model_name: the name clients put in their ModelSpec.
      host: interface to bind (127.0.0.1 by default; use 0.0.0.0 deliberately).
      port: gRPC port (0 picks a free one; see `.port` after `start()`).
      rest_port: REST port, or None for no REST endpoint (0 picks a free one).
      max_workers: gRPC worker threads.
      poll_seconds: look for new versions this often (None: load once).
      warmup: run the warmup records of each version when loading it.
      rest_timeout: socket timeout of each REST connection, in seconds.
    """

    def __init__(self, base_path: str, model_name: str = "gru4rec", host: str = "127.0.0.1",
                 port: int = 8500, rest_port: int | None = None, max_workers: int = 8,
                 poll_seconds: float | None = None, warmup: bool = True,
                 rest_timeout: float = 30.0):
        self.manager = ModelManager(base_path, model_name, warmup=warmup)
        self.host = host
        self.port = port
        self.rest_port = rest_port
        self.max_workers = int(max_workers)
        self.poll_seconds = poll_seconds
        self.rest_timeout = float(rest_timeout)
        self._grpc = None
        self._http = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    def start(self) -> DevServer:
        from tf_gru4rec.serving.rest import make_http_server

        self._grpc = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=self.max_workers),
            options=[("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
                     ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES),
                     ("grpc.so_reuseport", 0)])
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            _PredictionService(self.manager), self._grpc)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            _ModelService(self.manager), self._grpc)
        bound = self._grpc.add_insecure_port(f"{self.host}:{self.port}")
        if bound == 0:
            raise OSError(f"Cannot bind the gRPC port {self.host}:{self.port}")
        self.port = bound
        self._grpc.start()
        if self.rest_port is not None:
            self._http = make_http_server(self.manager, self.host, self.rest_port,
                                          self.rest_timeout)
            self.rest_port = self._http.server_address[1]
            self._spawn(self._http.serve_forever, "rest")
        if self.poll_seconds:
            self._spawn(self._poll, "poll")
        logger.info("development server for model %r: gRPC %s:%d%s", self.manager.model_name,
                    self.host, self.port,
                    f", REST {self.host}:{self.rest_port}" if self._http else "")
        return self

    def _spawn(self, target, name):
        thread = threading.Thread(target=target, name=f"dev-server-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _poll(self):
        while not self._stop.wait(self.poll_seconds):
            try:
                self.manager.reload()
            except Exception:  # a half-broken version must not stop the server
                logger.exception("failed to load a new version; keeping the current one")

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, grace: float | None = 1.0) -> None:
        self._stop.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._grpc is not None:
            self._grpc.stop(grace).wait()

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C stops it)."""
        try:
            self._grpc.wait_for_termination()
        except KeyboardInterrupt:
            self.stop()

    def __enter__(self):
        return self.start() if self._grpc is None else self

    def __exit__(self, *exc):
        self.stop()
