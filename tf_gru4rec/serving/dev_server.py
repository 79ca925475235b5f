"""A development server speaking TF Serving's gRPC API (and a little of its REST API).

This is a stand-in for TensorFlow Serving, for tests and for laptops without Docker: it is NOT
the product and not tuned for production (one Python process, the GIL, no batching, no model
config file, no monitoring). In production run the `tensorflow/serving` container from
`serving/` with the same SavedModel directory.

What it does, as TF Serving does:
  - loads the latest numeric version under a base path (`<base>/<version>/`), runs the
    warmup records in `assets.extra/tf_serving_warmup_requests`, and (with `poll_seconds`)
    switches to newer versions as they appear; like TF Serving, a new version starts with an
    empty session table;
  - `tensorflow.serving.PredictionService/Predict` and `GetModelMetadata`,
    `tensorflow.serving.ModelService/GetModelStatus` with the `tensorflow_serving.apis` protos;
  - REST: `POST /v1/models/<name>[/versions/<v>]:predict` (columnar "inputs" or row
    "instances"), `GET /v1/models/<name>[/versions/<v>]` and `.../metadata`;
  - malformed requests get INVALID_ARGUMENT (HTTP 400), unknown models or versions NOT_FOUND,
    and the server keeps serving.
It binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import concurrent.futures
import http.server
import json
import logging
import os
import re
import threading
import time

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

logger = logging.getLogger(__name__)

WARMUP_PATH = os.path.join("assets.extra", "tf_serving_warmup_requests")


class RequestError(Exception):
    """A request that cannot be served: `code` is a `grpc.StatusCode`."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Servable:
    """One loaded SavedModel version: its functions and SignatureDefs."""

    def __init__(self, path: str, version: int):
        self.path = path
        self.version = version
        self.loaded = tf.saved_model.load(path)
        self.functions = dict(self.loaded.signatures)
        proto = saved_model_pb2.SavedModel()
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            proto.ParseFromString(f.read())
        self.signature_defs = {k: v for k, v in proto.meta_graphs[0].signature_def.items()
                               if not k.startswith("__")}
        self.input_specs = {name: fn.structured_input_signature[1]
                            for name, fn in self.functions.items()}

    def run(self, signature_name: str, inputs: dict, output_filter=(),
            strict_dtypes: bool = True) -> dict:
        """Run a signature on numpy inputs -> name -> numpy output; raises `RequestError`.

        With `strict_dtypes` (gRPC, as TF Serving) numeric inputs must have the signature's
        dtype; otherwise (REST, JSON numbers) they are cast to it.
        """
        name = signature_name or "serving_default"
        if name not in self.functions:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Serving signature name: \"{name}\" not found in signature def; "
                               f"signatures: {sorted(self.functions)}")
        specs = self.input_specs[name]
        if set(inputs) != set(specs):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Signature {name!r} expects inputs {sorted(specs)}; received "
                               f"{sorted(inputs)}")
        tensors = {}
        for key, spec in specs.items():
            tensors[key] = _check_input(name, key, inputs[key], spec, strict_dtypes)
        unknown = set(output_filter) - set(self.signature_defs[name].outputs)
        if unknown:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"output_filter names unknown outputs {sorted(unknown)}")
        try:
            outputs = self.functions[name](**tensors)
        except (tf.errors.InvalidArgumentError, TypeError, ValueError) as error:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, _first_line(error)) from None
        except tf.errors.OpError as error:
            raise RequestError(_grpc_code(error.error_code), _first_line(error)) from None
        wanted = set(output_filter) or set(outputs)
        return {k: v.numpy() for k, v in outputs.items() if k in wanted}

    def warmup(self) -> int:
        """Run the warmup records (PredictionLog protos) once each, in order."""
        path = os.path.join(self.path, WARMUP_PATH)
        if not os.path.exists(path):
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(path):
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if log.WhichOneof("log_type") != "predict_log":
                continue
            request = log.predict_log.request
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            self.run(request.model_spec.signature_name, inputs)
            count += 1
        return count


def _check_input(signature: str, key: str, value: np.ndarray, spec: tf.TensorSpec,
                 strict_dtypes: bool):
    dtype = spec.dtype
    if dtype == tf.string:
        if value.dtype.kind not in "OSU":
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"{signature}: input {key!r} should be string; received "
                               f"{value.dtype}")
    else:
        wrong = value.dtype != dtype.as_numpy_dtype if strict_dtypes else (
            value.dtype.kind in "OSU"
            or not np.can_cast(value.dtype, dtype.as_numpy_dtype, casting="same_kind"))
        if wrong:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"{signature}: input {key!r} should be {dtype.name}; received "
                               f"{value.dtype}")
        value = value.astype(dtype.as_numpy_dtype, copy=False)
    if not spec.shape.is_compatible_with(value.shape):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{signature}: input {key!r} should have shape "
                           f"{_shape_str(spec.shape)}; received {list(value.shape)}")
    return tf.constant(value, dtype=dtype)


def _shape_str(shape: tf.TensorShape) -> str:
    return "[" + ", ".join("-1" if d is None else str(d) for d in shape.as_list()) + "]"


def _first_line(error: Exception) -> str:
    text = getattr(error, "message", None) or str(error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def _grpc_code(tf_code: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == tf_code:
            return code
    return grpc.StatusCode.INTERNAL


class ModelManager:
    """Keeps the latest version of one model loaded, optionally polling for new ones."""

    def __init__(self, base_path: str, model_name: str, warmup: bool = True):
        if not os.path.isdir(base_path):
            raise FileNotFoundError(f"Model base path not found: {base_path!r}")
        self.base_path = os.path.abspath(base_path)
        self.model_name = model_name
        self.warmup = warmup
        self._lock = threading.Lock()
        self._current: Servable | None = None
        self.reload()
        if self._current is None:
            raise FileNotFoundError(f"No numeric version directory with a saved_model.pb "
                                    f"under {base_path!r}")

    def latest_version_on_disk(self) -> int | None:
        versions = [int(n) for n in os.listdir(self.base_path) if n.isdigit() and
                    os.path.exists(os.path.join(self.base_path, n, "saved_model.pb"))]
        return max(versions, default=None)

    def reload(self) -> bool:
        """Load the latest version if it is newer than the loaded one; True if switched."""
        version = self.latest_version_on_disk()
        current = self._current
        if version is None or (current is not None and current.version == version):
            return False
        start = time.perf_counter()
        servable = Servable(os.path.join(self.base_path, str(version)), version)
        n_warmup = servable.warmup() if self.warmup else 0
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


def _version_of(model_spec) -> int | None:
    if model_spec.HasField("version_label"):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           "version_label is not supported by the development server")
    return model_spec.version.value if model_spec.HasField("version") else None


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager):
        self.manager = manager

    def Predict(self, request, context):
        try:
            servable = self.manager.get(request.model_spec.name, _version_of(request.model_spec))
            inputs = {}
            for key, proto in request.inputs.items():
                try:
                    inputs[key] = tf.make_ndarray(proto)
                except (TypeError, ValueError) as error:
                    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"input {key!r} is not a valid TensorProto: "
                                       f"{_first_line(error)}") from None
            outputs = servable.run(request.model_spec.signature_name, inputs,
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
            servable = self.manager.get(request.model_spec.name, _version_of(request.model_spec))
        except RequestError as error:
            context.abort(error.code, error.message)
        return _metadata_response(request.model_spec.name, servable)

    def Classify(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Classify is not served; use Predict")

    def Regress(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Regress is not served; use Predict")

    def MultiInference(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "MultiInference is not served; use Predict")


def _metadata_response(name: str, servable: Servable):
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, value in servable.signature_defs.items():
        signature_map.signature_def[key].CopyFrom(value)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = name
    response.model_spec.version.value = servable.version
    response.metadata["signature_def"].Pack(signature_map)
    return response


def _status_response(servable: Servable):
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
            servable = self.manager.get(request.model_spec.name, _version_of(request.model_spec))
        except RequestError as error:
            context.abort(error.code, error.message)
        return _status_response(servable)

    def HandleReloadConfigRequest(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      "The development server serves one model; restart it to change that")


# ---------------------------------------------------------------------- REST
_REST_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?"
                        r"(?P<rest>/metadata|:predict)?$")
_HTTP_OF = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404,
            grpc.StatusCode.FAILED_PRECONDITION: 412, grpc.StatusCode.UNIMPLEMENTED: 501,
            grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.DEADLINE_EXCEEDED: 504}


def _make_rest_handler(manager: ModelManager):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            logger.debug("rest: " + fmt, *args)

        def _send(self, code: int, body: dict):
            data = json.dumps(body).encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self, method: str):
            match = _REST_PATH.match(self.path.split("?", 1)[0])
            if match is None:
                raise RequestError(grpc.StatusCode.NOT_FOUND, f"Malformed request: {method} "
                                                              f"{self.path}")
            version = int(match["version"]) if match["version"] else None
            servable = manager.get(match["name"], version)
            rest = match["rest"] or ""
            if method == "GET" and rest == "":
                return _to_json(_status_response(servable))
            if method == "GET" and rest == "/metadata":
                return _to_json(_metadata_response(match["name"], servable))
            if method == "POST" and rest == ":predict":
                return _rest_predict(servable, self._body())
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"Malformed request: {method} "
                                                          f"{self.path}")

        def _body(self) -> dict:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"JSON parse error: {error}") from None
            if not isinstance(body, dict):
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   "the request body should be a JSON object")
            return body

        def _handle(self, method: str):
            try:
                self._send(200, self._route(method))
            except RequestError as error:
                self._send(_HTTP_OF.get(error.code, 500), {"error": error.message})
            except Exception as error:  # keep serving whatever happens
                logger.exception("rest: unexpected error")
                self._send(500, {"error": f"{type(error).__name__}: {error}"})

        def do_GET(self):
            self._handle("GET")

        def do_POST(self):
            self._handle("POST")

    return Handler


def _to_json(message) -> dict:
    """A response proto as TF Serving's REST API writes it (snake_case, defaults included)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def _rest_predict(servable: Servable, body: dict) -> dict:
    signature = body.get("signature_name") or "serving_default"
    if "inputs" in body:
        raw, columnar = body["inputs"], True
    elif "instances" in body:
        columnar = False
        instances = body["instances"]
        if not isinstance(instances, list) or not instances or not all(
                isinstance(x, dict) for x in instances):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               "'instances' should be a non-empty list of objects")
        raw = {k: [x.get(k) for x in instances] for k in instances[0]}
    else:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           "Missing 'inputs' or 'instances' key")
    if not isinstance(raw, dict):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "'inputs' should be an object")
    specs = servable.input_specs.get(signature, {})
    inputs = {}
    for key, value in raw.items():
        spec = specs.get(key)
        try:
            if spec is not None and spec.dtype == tf.string:
                array = np.asarray(value, dtype=object)
                if any(not isinstance(v, str) for v in array.ravel()):
                    raise ValueError("expected strings")
            else:
                array = np.asarray(value, dtype=None if spec is None
                                   else spec.dtype.as_numpy_dtype)
        except (TypeError, ValueError) as error:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {key!r}: {error}") from None
        inputs[key] = array
    outputs = servable.run(signature, inputs, strict_dtypes=False)
    outputs = {k: _jsonable(v) for k, v in outputs.items()}
    if columnar:
        return {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}
    n = len(next(iter(outputs.values())))
    return {"predictions": [{k: v[i] for k, v in outputs.items()} for i in range(n)]}


def _jsonable(array: np.ndarray):
    if array.dtype == object:
        return np.vectorize(lambda b: b.decode("utf-8", errors="replace")
                            if isinstance(b, bytes) else b, otypes=[object])(array).tolist()
    return array.tolist()


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
    """

    def __init__(self, base_path: str, model_name: str = "gru4rec", host: str = "127.0.0.1",
                 port: int = 8500, rest_port: int | None = None, max_workers: int = 8,
                 poll_seconds: float | None = None, warmup: bool = True):
        self.manager = ModelManager(base_path, model_name, warmup=warmup)
        self.host = host
        self.port = port
        self.rest_port = rest_port
        self.max_workers = int(max_workers)
        self.poll_seconds = poll_seconds
        self._grpc = None
        self._http = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    def start(self) -> DevServer:
        self._grpc = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=self.max_workers),
            options=[("grpc.max_receive_message_length", 64 * 1024 * 1024),
                     ("grpc.max_send_message_length", 64 * 1024 * 1024),
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
            self._http = http.server.ThreadingHTTPServer(
                (self.host, self.rest_port), _make_rest_handler(self.manager))
            self._http.daemon_threads = True
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
