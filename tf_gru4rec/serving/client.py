"""Clients for a GRU4Rec model served by TensorFlow Serving (or `dev_server`).

Only `grpcio`, `numpy` and the `tensorflow-serving-api` protos are used: no training code.

  client = PredictionClient("127.0.0.1:8500", "gru4rec", timeout=2.0)
  client.wait(60)                                        # a server still starting
  out = client.click(["session-1"], ["214536502"])     # stateful serving_default
  out["item_ids"][0]                                     # K raw item ids (str)
  client.end_sessions(["session-1"])

  rest = RestClient("http://127.0.0.1:8501", "gru4rec")
  rest.predict({"session_item_ids": [["", "214536502"]]}, signature_name="recommend")

  session = StatelessSession(client)                     # client-held state, `step`
  session.click("214536502")

Every failure raises `ServingError` with a gRPC-style status code (`INVALID_ARGUMENT`,
`NOT_FOUND`, `DEADLINE_EXCEEDED`, `UNAVAILABLE`, ...) and the server's message. Strings come
back as `str`, other tensors as numpy arrays.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

DEFAULT_TIMEOUT = 10.0

_NUMPY_OF = {
    types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64,
    types_pb2.DT_INT32: np.int32, types_pb2.DT_INT64: np.int64, types_pb2.DT_BOOL: np.bool_,
    types_pb2.DT_INT8: np.int8, types_pb2.DT_UINT8: np.uint8, types_pb2.DT_INT16: np.int16,
}
_DTYPE_OF = {np.dtype(v): k for k, v in _NUMPY_OF.items()}
_VALUE_FIELD = {
    types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val", types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_BOOL: "bool_val", types_pb2.DT_INT8: "int_val", types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_INT16: "int_val",
}


class ServingError(RuntimeError):
    """A failed request: `code` is a gRPC status name, e.g. "INVALID_ARGUMENT"."""

    def __init__(self, code: str, message: str, target: str = ""):
        self.code = code
        self.message = message
        self.target = target
        where = f" ({target})" if target else ""
        super().__init__(f"{code}{where}: {message}")


# ---------------------------------------------------------------------- tensors
def to_tensor_proto(value, dtype=None) -> tensor_pb2.TensorProto:
    """A numpy array (or nested lists) as a TensorProto; str/bytes become DT_STRING."""
    array = np.asarray(value, dtype=dtype)
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(d)) for d in array.shape])
    if array.dtype.kind in "USO":
        flat = [x if isinstance(x, bytes) else str(x).encode("utf-8") for x in array.ravel()]
        return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape,
                                      string_val=flat)
    if array.dtype == np.float16 or array.dtype.kind == "f" and array.dtype.itemsize > 8:
        array = array.astype(np.float32)
    if array.dtype not in _DTYPE_OF:
        raise TypeError(f"Cannot send a tensor of dtype {array.dtype}; use float32, float64, "
                        "int32, int64, bool or strings")
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return tensor_pb2.TensorProto(dtype=_DTYPE_OF[array.dtype], tensor_shape=shape,
                                  tensor_content=little.tobytes())


def from_tensor_proto(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """A TensorProto as a numpy array (strings decoded as UTF-8 `str`)."""
    shape = [d.size for d in proto.tensor_shape.dim]
    size = int(np.prod(shape)) if shape else 1
    if proto.dtype == types_pb2.DT_STRING:
        values = [v.decode("utf-8", errors="replace") for v in proto.string_val]
        array = np.empty(len(values), dtype=object)
        array[:] = values
    elif proto.dtype in _NUMPY_OF:
        dtype = np.dtype(_NUMPY_OF[proto.dtype])
        if proto.tensor_content:
            array = np.frombuffer(proto.tensor_content, dtype=dtype.newbyteorder("<"))
            array = array.astype(dtype)
        else:
            array = np.asarray(getattr(proto, _VALUE_FIELD[proto.dtype]), dtype=dtype)
    else:
        raise ServingError("INTERNAL", f"Unsupported output dtype "
                                       f"{types_pb2.DataType.Name(proto.dtype)}")
    if array.size == 1 and size > 1:  # TensorProto's "fill" convention
        array = np.repeat(array, size)
    if array.size != size:
        raise ServingError("INTERNAL", f"Tensor has {array.size} values for shape {shape}")
    return array.reshape(shape)


# ---------------------------------------------------------------------- gRPC
class PredictionClient:
    """gRPC client for the PredictionService and ModelService APIs of TF Serving.

    Args:
      target: "host:port" of the gRPC endpoint.
      model_name: the served model's name.
      timeout: default deadline of each call, in seconds.
      version: pin a model version (default: the latest the server has loaded).
    """

    def __init__(self, target: str = "127.0.0.1:8500", model_name: str = "gru4rec",
                 timeout: float = DEFAULT_TIMEOUT, version: int | None = None,
                 channel_options: Sequence[tuple] = ()):
        if not isinstance(target, str) or ":" not in target:
            raise ValueError(f"`target` should be 'host:port'. Received: {target!r}")
        if not timeout or timeout <= 0:
            raise ValueError(f"`timeout` should be a positive number of seconds. "
                             f"Received: {timeout!r}")
        self.target = target
        self.model_name = model_name
        self.timeout = float(timeout)
        self.version = version
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
                   ("grpc.max_send_message_length", 64 * 1024 * 1024), *channel_options]
        self._channel = grpc.insecure_channel(target, options=options)
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def _spec(self, signature_name: str = "") -> model_pb2.ModelSpec:
        spec = model_pb2.ModelSpec(name=self.model_name, signature_name=signature_name)
        if self.version is not None:
            spec.version.value = int(self.version)
        return spec

    def _call(self, method, request, timeout):
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as error:
            raise _grpc_error(error, self.target,
                              self.timeout if timeout is None else timeout) from None

    def predict(self, inputs: Mapping, signature_name: str = "serving_default",
                output_filter: Sequence[str] = (), timeout: float | None = None) -> dict:
        """Run a signature: `inputs` name -> array-like; returns name -> numpy array."""
        request = predict_pb2.PredictRequest(model_spec=self._spec(signature_name),
                                             output_filter=list(output_filter))
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(
                value if isinstance(value, tensor_pb2.TensorProto) else to_tensor_proto(value))
        response = self._call(self._predict.Predict, request, timeout)
        return {name: from_tensor_proto(t) for name, t in response.outputs.items()}

    def click(self, session_ids: Sequence[str], item_ids: Sequence[str],
              positions: Sequence[int] | None = None, timeout: float | None = None) -> dict:
        """Stateful step: one click per session -> item_ids [B, K], scores [B, K], known [B].

        With `positions` (each click's 0-based index in its session) the `click` signature is
        used, which never applies a retried click twice (and adds `applied` [B]); without,
        `serving_default`.
        """
        inputs = {"session_id": _strings(session_ids), "item_id": _strings(item_ids)}
        if positions is None:
            return self.predict(inputs, timeout=timeout)
        inputs["position"] = np.asarray(positions, dtype=np.int64)
        return self.predict(inputs, "click", timeout=timeout)

    def end_sessions(self, session_ids: Sequence[str], timeout: float | None = None):
        """Forget sessions on the server -> ended bool [B] (the session had state)."""
        return self.predict({"session_id": _strings(session_ids)}, "end_session",
                            timeout=timeout)["ended"]

    def recommend(self, sessions: Sequence[Sequence[str]], timeout: float | None = None) -> dict:
        """Stateless whole-session scoring (`recommend`) for lists of clicked item ids."""
        return self.predict({"session_item_ids": pad_sessions(sessions)}, "recommend",
                            timeout=timeout)

    def metadata(self, timeout: float | None = None) -> dict:
        """Signatures of the served model: name -> {"inputs"/"outputs": name -> (dtype,
        shape)}, with dtype a numpy-style name ("string", "float32", ...) and -1 for unknown
        dimensions."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=self._spec(), metadata_field=["signature_def"])
        response = self._call(self._predict.GetModelMetadata, request, timeout)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return {name: {"inputs": _tensor_infos(sig.inputs), "outputs": _tensor_infos(sig.outputs)}
                for name, sig in signature_map.signature_def.items()}

    def status(self, timeout: float | None = None) -> list[dict]:
        """Versions known to the server: [{"version", "state", "error_code", "error_message"}]."""
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=self._spec())
        response = self._call(self._models.GetModelStatus, request, timeout)
        states = get_model_status_pb2.ModelVersionStatus.State
        return [{"version": s.version, "state": states.Name(s.state),
                 "error_code": s.status.error_code, "error_message": s.status.error_message}
                for s in response.model_version_status]

    def is_available(self, timeout: float | None = None) -> bool:
        """True if some version of the model is AVAILABLE (False on any error)."""
        try:
            return any(s["state"] == "AVAILABLE" for s in self.status(timeout))
        except ServingError:
            return False

    def wait(self, seconds: float, poll: float = 0.5) -> None:
        """Wait until the model is AVAILABLE, for at most `seconds` (see `wait_until_ready`)."""
        wait_until_ready(self, seconds, self.target, poll)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _grpc_error(error: grpc.RpcError, target: str, timeout: float) -> ServingError:
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    name = code.name if code is not None else "UNKNOWN"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        details = f"no answer within {timeout:g}s ({details})"
    elif code == grpc.StatusCode.UNAVAILABLE:
        details = f"cannot reach a server at {target} ({details})"
    return ServingError(name, details or "", target)


def _tensor_infos(infos) -> dict:
    out = {}
    for name, info in infos.items():
        dtype = types_pb2.DataType.Name(info.dtype).removeprefix("DT_").lower()
        dtype = {"float": "float32", "double": "float64"}.get(dtype, dtype)
        shape = None if info.tensor_shape.unknown_rank else tuple(
            d.size for d in info.tensor_shape.dim)
        out[name] = (dtype, shape)
    return out


# ---------------------------------------------------------------------- REST
class RestClient:
    """REST client for TF Serving's `:predict` and model status endpoints.

    Args:
      base_url: e.g. "http://127.0.0.1:8501".
      model_name, timeout, version: as for `PredictionClient`.
    """

    def __init__(self, base_url: str = "http://127.0.0.1:8501", model_name: str = "gru4rec",
                 timeout: float = DEFAULT_TIMEOUT, version: int | None = None):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"`base_url` should start with http:// or https://. "
                             f"Received: {base_url!r}")
        if not timeout or timeout <= 0:
            raise ValueError(f"`timeout` should be a positive number of seconds. "
                             f"Received: {timeout!r}")
        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self.timeout = float(timeout)
        self.version = version

    def _model_url(self) -> str:
        url = f"{self.base_url}/v1/models/{self.model_name}"
        return url if self.version is None else f"{url}/versions/{int(self.version)}"

    def _request(self, url: str, body: dict | None, timeout: float | None) -> dict:
        timeout = self.timeout if timeout is None else timeout
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as error:
            raise ServingError(_HTTP_CODES.get(error.code, "UNKNOWN"),
                               _error_message(error), url) from None
        except TimeoutError:
            raise ServingError("DEADLINE_EXCEEDED", f"no answer within {timeout:g}s",
                               url) from None
        except urllib.error.URLError as error:
            if isinstance(error.reason, TimeoutError):
                raise ServingError("DEADLINE_EXCEEDED", f"no answer within {timeout:g}s",
                                   url) from None
            raise ServingError("UNAVAILABLE", f"cannot reach {url} ({error.reason})",
                               url) from None
        except json.JSONDecodeError as error:
            raise ServingError("INTERNAL", f"the server sent invalid JSON ({error})",
                               url) from None

    def predict(self, inputs: Mapping, signature_name: str = "serving_default",
                timeout: float | None = None) -> dict:
        """Columnar `:predict`: `inputs` name -> array-like; returns name -> numpy array."""
        body = {"signature_name": signature_name,
                "inputs": {k: np.asarray(v).tolist() if not isinstance(v, list) else v
                           for k, v in inputs.items()}}
        answer = self._request(f"{self._model_url()}:predict", body, timeout)
        if "outputs" not in answer:
            raise ServingError("INTERNAL", f"no 'outputs' in the answer: {str(answer)[:200]}")
        outputs = answer["outputs"]
        if not isinstance(outputs, dict):  # TF Serving unwraps single-output signatures
            return {"output": np.asarray(outputs)}
        return {k: _json_array(v) for k, v in outputs.items()}

    def click(self, session_ids, item_ids, positions=None, timeout: float | None = None) -> dict:
        inputs = {"session_id": list(map(str, session_ids)), "item_id": list(map(str, item_ids))}
        if positions is None:
            return self.predict(inputs, timeout=timeout)
        inputs["position"] = [int(p) for p in positions]
        return self.predict(inputs, "click", timeout=timeout)

    def status(self, timeout: float | None = None) -> list[dict]:
        """`GET /v1/models/<name>`: [{"version", "state", "error_code", "error_message"}]."""
        answer = self._request(self._model_url(), None, timeout)
        return [{"version": int(s.get("version", 0)), "state": s.get("state", ""),
                 "error_code": s.get("status", {}).get("error_code", "OK"),
                 "error_message": s.get("status", {}).get("error_message", "")}
                for s in answer.get("model_version_status", [])]

    def is_available(self, timeout: float | None = None) -> bool:
        try:
            return any(s["state"] == "AVAILABLE" for s in self.status(timeout))
        except ServingError:
            return False

    def wait(self, seconds: float, poll: float = 0.5) -> None:
        """Wait until the model is AVAILABLE, for at most `seconds` (see `wait_until_ready`)."""
        wait_until_ready(self, seconds, self.base_url, poll)


def wait_until_ready(client, seconds: float, target: str, poll: float = 0.5) -> None:
    """Poll `client.status()` until a version of the model is AVAILABLE: a server that is
    still starting (connection refused), or loading the model (no such model yet, or a
    version not yet AVAILABLE), is waited for, at most `seconds` (0: asked once).

    Raises:
      ServingError: UNAVAILABLE after `seconds`, saying what the server last answered.
    """
    deadline = time.monotonic() + max(float(seconds), 0.0)
    while True:
        remaining = deadline - time.monotonic()
        try:
            states = client.status(timeout=max(min(remaining, client.timeout), poll))
            if any(s["state"] == "AVAILABLE" for s in states):
                return
            last = "the model is loading (versions: " + ", ".join(
                f"{s['version']} {s['state']}" for s in states) + ")"
        except ServingError as error:
            if error.code not in ("UNAVAILABLE", "NOT_FOUND", "DEADLINE_EXCEEDED"):
                raise
            last = str(error)
        if time.monotonic() + poll > deadline:
            raise ServingError(
                "UNAVAILABLE", f"model {client.model_name!r} not ready at {target} after "
                f"waiting {seconds:g} s (last answer: {last}); is the server running (e.g. "
                "`tf-gru4rec serve`), and on this port? Wait longer with --wait", target)
        time.sleep(poll)


_HTTP_CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED",
               409: "ABORTED", 412: "FAILED_PRECONDITION", 429: "RESOURCE_EXHAUSTED",
               500: "INTERNAL", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE",
               504: "DEADLINE_EXCEEDED"}


def _error_message(error: urllib.error.HTTPError) -> str:
    try:
        body = error.read().decode("utf-8", errors="replace")
    except OSError:
        return f"HTTP {error.code}"
    try:
        return json.loads(body).get("error", body)
    except (json.JSONDecodeError, AttributeError):
        return body or f"HTTP {error.code}"


def _json_array(value) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind == "U":
        array = array.astype(object)
    elif array.dtype == np.float64:
        array = array.astype(np.float32)
    return array


# ---------------------------------------------------------------------- helpers
def _strings(values) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = [str(v) for v in values]
    return array


def pad_sessions(sessions: Sequence[Sequence[str]]) -> np.ndarray:
    """Sessions of clicked item ids -> string [B, 1 + T] padded with "" for `recommend`.

    The first column is always "": TF Serving's batching pads shorter requests with the first
    element of a tensor, so it must be the padding value.
    """
    if isinstance(sessions, (str, bytes)) or not len(sessions):
        raise ValueError("`sessions` should be a non-empty list of lists of item ids")
    width = 1 + max(len(s) for s in sessions)
    array = np.full((len(sessions), width), "", dtype=object)
    for row, items in enumerate(sessions):
        array[row, width - len(items):] = [str(x) for x in items]
    return array


class StatelessSession:
    """One session scored with the stateless `step` signature; the state stays here.

    Any replica can answer any click, so no sticky routing is needed; the cost is sending the
    state (4 * sum(layers) bytes) both ways with every click.

    Args:
      client: a `PredictionClient` or `RestClient`.
      state_size: sum of the GRU layer sizes; read from the model's metadata by default
        (gRPC clients only).
      exclude_seen: whether the model was exported with exclude_seen (then the clicked items
        are sent along); read from the metadata by default.
    """

    def __init__(self, client, state_size: int | None = None, exclude_seen: bool | None = None):
        self.client = client
        if state_size is None or exclude_seen is None:
            if not hasattr(client, "metadata"):
                raise ValueError("Give `state_size` and `exclude_seen` for a client without "
                                 "metadata()")
            inputs = client.metadata()["step"]["inputs"]
            state_size = inputs["state"][1][1] if state_size is None else state_size
            exclude_seen = "seen_item_ids" in inputs if exclude_seen is None else exclude_seen
        if int(state_size) < 1:
            raise ValueError(f"`state_size` should be positive. Received: {state_size}")
        self.state = np.zeros((1, int(state_size)), np.float32)
        self.exclude_seen = bool(exclude_seen)
        self.items: list[str] = []

    def click(self, item_id: str, timeout: float | None = None) -> dict:
        """Send one click -> {"item_ids": [K] str, "scores": [K] float32, "known": bool}."""
        inputs = {"item_id": _strings([item_id]), "state": self.state}
        if self.exclude_seen:
            inputs["seen_item_ids"] = pad_sessions([self.items])
        out = self.client.predict(inputs, "step", timeout=timeout)
        self.state = np.asarray(out["state"], np.float32).reshape(self.state.shape)
        known = bool(np.asarray(out["known"]).reshape(-1)[0])
        if known:
            self.items.append(str(item_id))
        return {"item_ids": list(out["item_ids"][0]), "scores": np.asarray(out["scores"][0]),
                "known": known}

    def reset(self) -> None:
        self.state = np.zeros_like(self.state)
        self.items = []
