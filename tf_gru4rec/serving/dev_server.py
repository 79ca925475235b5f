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
import threading

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tf_gru4rec.serving.rest import make_http_server
from tf_gru4rec.serving.servables import (  # noqa: F401 (also importable from here, as before)
    GRPC_MAX_MESSAGE_BYTES,
    ModelManager,
    RequestError,
    Servable,
    decode_inputs,
    metadata_response,
    status_response,
    version_of,
)

logger = logging.getLogger(__name__)


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
