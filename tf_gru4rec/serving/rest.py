"""The development server's REST endpoint, shaped like TF Serving's REST API.

`POST /v1/models/<name>[/versions/<v>]:predict` with columnar `"inputs"` or row `"instances"`,
`GET /v1/models/<name>[/versions/<v>]` (status) and `.../metadata`. As in TF Serving's JSON
API, a string may be sent as `{"b64": "<base64>"}`, a row-format answer of a one-output
signature lists the values without the output's name, and non-finite floats are written as
the strings "NaN", "Infinity" and "-Infinity" (never as bare NaN, which is not JSON). Every bad
request gets a 4xx answer with `{"error": message}` and the server keeps serving: a body over
`MAX_BODY_BYTES` (413, after reading and discarding up to `MAX_DRAIN_BYTES` of it so that the
client reads the answer instead of a reset connection; at once to a client that sent
`Expect: 100-continue`), a missing, negative or absurd Content-Length (400/411/413), invalid or
too deeply nested JSON (400), bad base64 (400), numbers that overflow the signature's dtype
(400). Each connection has a socket timeout, so a client that sends less than it announced
cannot hold a handler thread forever.
"""

from __future__ import annotations

import base64
import http.server
import json
import logging
import math
import re

import grpc
import numpy as np
from google.protobuf import json_format

from tf_gru4rec.serving.servables import (
    ModelManager,
    RequestError,
    Servable,
    metadata_response,
    status_response,
)

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_DRAIN_BYTES = 1024 * 1024 * 1024  # a larger body is refused without reading it
MAX_JSON_DEPTH = 32
_TOO_DEEP = object()
SOCKET_TIMEOUT_SECONDS = 30.0

_REST_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?"
                        r"(?P<rest>/metadata|:predict)?$")
_HTTP_OF = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404,
            grpc.StatusCode.FAILED_PRECONDITION: 412, grpc.StatusCode.UNIMPLEMENTED: 501,
            grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.DEADLINE_EXCEEDED: 504}


class HttpError(Exception):
    """An answer other than 200 that is not a TF status (e.g. 411, 413)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def make_http_server(manager: ModelManager, host: str, port: int,
                     timeout: float = SOCKET_TIMEOUT_SECONDS):
    """A threading HTTP server (not started) answering the REST API for `manager`'s model;
    `timeout` is the socket timeout of each connection, in seconds."""
    server = http.server.ThreadingHTTPServer((host, port), _make_handler(manager, timeout))
    server.daemon_threads = True
    return server


def _make_handler(manager: ModelManager, socket_timeout: float):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = socket_timeout  # for every read and write of the connection

        def log_message(self, fmt, *args):
            logger.debug("rest: " + fmt, *args)

        def _send(self, code: int, body: dict, close: bool = False):
            try:
                data = json.dumps(body, allow_nan=False)
            except ValueError:  # a non-finite float somewhere: rare, so walk the body then
                data = json.dumps(_finite_json(body), allow_nan=False)
            data = data.encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)

        def _route(self, method: str):
            match = _REST_PATH.match(self.path.split("?", 1)[0])
            if match is None:
                raise RequestError(grpc.StatusCode.NOT_FOUND,
                                   f"Malformed request: {method} {self.path[:200]}")
            version = int(match["version"]) if match["version"] else None
            servable = manager.get(match["name"], version)
            rest = match["rest"] or ""
            if method == "GET" and rest == "":
                return _to_json(status_response(servable))
            if method == "GET" and rest == "/metadata":
                return _to_json(metadata_response(match["name"], servable))
            if method == "POST" and rest == ":predict":
                return _predict(servable, self._body())
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"Malformed request: {method} {self.path[:200]}")

        def _body(self) -> dict:
            self.body_read = True
            return parse_body(self.headers.get("Content-Length"), self.rfile.read)

        def _handle(self, method: str):
            self.body_read = False
            try:
                self._send(200, self._route(method))
            except RequestError as error:
                # A body left unread would be taken for the next request: close instead.
                self._send(_HTTP_OF.get(error.code, 500), {"error": error.message},
                           close=method == "POST" and not self.body_read)
            except HttpError as error:  # the body was not read: do not reuse the connection
                self._send(error.status, {"error": error.message}, close=True)
            except TimeoutError:
                self.close_connection = True
            except Exception as error:  # keep serving whatever happens
                logger.exception("rest: unexpected error")
                self._send(500, {"error": f"{type(error).__name__}: {error}"})

        def handle_expect_100(self):
            """Refuse a body over the limit before the client sends it."""
            length = (self.headers.get("Content-Length") or "").strip()
            if length.isdigit() and int(length) > MAX_BODY_BYTES:
                self._send(413, {"error": _too_large(int(length))}, close=True)
                return False
            return super().handle_expect_100()

        def do_GET(self):
            self._handle("GET")

        def do_POST(self):
            self._handle("POST")

    return Handler


def parse_body(content_length: str | None, read) -> dict:
    """Read and parse a JSON request body of `content_length` bytes with `read(n)`.

    Raises `HttpError` (411/400/413) for a missing, malformed, negative or too large length,
    and `RequestError` (INVALID_ARGUMENT) for bytes that are not a JSON object of bounded depth.
    """
    if content_length is None:
        raise HttpError(411, "a request body needs a Content-Length header")
    if not content_length.strip().isdigit():
        raise HttpError(400, f"Content-Length should be a non-negative integer; received "
                             f"{content_length[:40]!r}")
    length = int(content_length)
    if length > MAX_BODY_BYTES:
        _drain(read, length)
        raise HttpError(413, _too_large(length))
    data = read(length)
    if len(data) < length:
        raise HttpError(400, f"the request body ended after {len(data)} of {length} bytes")
    try:
        body = json.loads(data.decode("utf-8"), parse_constant=_reject_constant,
                          parse_float=_finite_float)
    except RecursionError:  # the C parser's own limit, far above MAX_JSON_DEPTH
        body = _TOO_DEEP
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as error:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"JSON parse error: {str(error)[:200]}") from None
    if body is _TOO_DEEP or _depth(body) > MAX_JSON_DEPTH:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"JSON parse error: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    if not isinstance(body, dict):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           "the request body should be a JSON object")
    return body


def _too_large(length: int) -> str:
    return f"the request body is {length} bytes; the limit is {MAX_BODY_BYTES}"


def _drain(read, length: int) -> None:
    """Read and discard a body of `length` bytes (at most `MAX_DRAIN_BYTES`), so that closing
    the connection after the answer does not reset it under a client still sending."""
    remaining = length if length <= MAX_DRAIN_BYTES else 0
    while remaining > 0:
        chunk = read(min(remaining, 1 << 20))
        if not chunk:
            break
        remaining -= len(chunk)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not np.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def _depth(value) -> int:
    """Nesting depth of parsed JSON (1 for a flat list or object; counting stops past
    MAX_JSON_DEPTH); iterative, its cost grows with the values, not with the body's bytes."""
    depth, level = 0, [value] if isinstance(value, (list, dict)) else []
    while level and depth <= MAX_JSON_DEPTH:
        depth += 1
        level = [child for c in level for child in (c.values() if isinstance(c, dict) else c)
                 if isinstance(child, (list, dict))]
    return depth


def _to_json(message) -> dict:
    """A response proto as TF Serving's REST API writes it (snake_case, defaults included)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def _predict(servable: Servable, body: dict) -> dict:
    signature = body.get("signature_name") or "serving_default"
    if not isinstance(signature, str):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "'signature_name' should be a string")
    if "inputs" in body:
        raw, columnar = body["inputs"], True
    elif "instances" in body:
        columnar = False
        instances = body["instances"]
        if not isinstance(instances, list) or not instances or not all(
                isinstance(x, dict) for x in instances):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               "'instances' should be a non-empty list of objects")
        keys = set(instances[0])
        if any(set(x) != keys for x in instances):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               "every instance should have the same keys")
        raw = {k: [x[k] for x in instances] for k in instances[0]}
    else:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           "Missing 'inputs' or 'instances' key")
    if not isinstance(raw, dict):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "'inputs' should be an object")
    try:
        infos = servable.bundle.input_infos(signature)
    except ValueError as error:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None
    inputs = {key: _to_array(key, value, infos.get(key, (None, None))[0])
              for key, value in raw.items()}
    arrays = servable.run(signature, inputs, strict_dtypes=False)
    outputs = {k: _jsonable(v) for k, v in arrays.items()}
    if columnar:
        return {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}
    if any(np.ndim(v) == 0 for v in arrays.values()):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"signature {signature!r} has outputs without a batch dimension; "
                           f"send columnar \"inputs\" instead of \"instances\"")
    if len(outputs) == 1:  # TF Serving leaves out the name of a single output
        return {"predictions": next(iter(outputs.values()))}
    n = len(next(iter(outputs.values())))
    return {"predictions": [{k: v[i] for k, v in outputs.items()} for i in range(n)]}


def _to_array(key: str, value, dtype) -> np.ndarray:
    """A JSON value -> numpy array of the signature's dtype; RequestError if it cannot be."""
    try:
        if dtype is object:
            array = np.asarray(value, dtype=object)
            flat = array.ravel()
            for n, v in enumerate(flat):
                if isinstance(v, dict) and set(v) == {"b64"} and isinstance(v["b64"], str):
                    flat[n] = base64.b64decode(v["b64"], validate=True)
                elif not isinstance(v, str):
                    raise ValueError('expected strings (or {"b64": "<base64>"} objects)')
            return flat.reshape(array.shape)
        array = np.asarray(value)
        if array.dtype == object or array.dtype.kind not in "biuf":
            raise ValueError("expected numbers in a rectangular array")
        if dtype is not None:
            with np.errstate(over="raise", invalid="raise"):
                cast = array.astype(dtype)
            if array.dtype.kind == "f" and np.isfinite(array).all() and not np.isfinite(
                    cast).all():
                raise OverflowError(f"a number does not fit {np.dtype(dtype).name}")
            array = cast
        return array
    except (TypeError, ValueError, OverflowError, FloatingPointError) as error:  # bad base64 too
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input {key!r}: {str(error)[:200]}") from None


def _finite_json(value):
    """`value` with non-finite floats replaced by "NaN", "Infinity" or "-Infinity"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, list):
        return [_finite_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    return value


def _jsonable(array: np.ndarray):
    if array.dtype == object:
        return np.vectorize(lambda b: b.decode("utf-8", errors="replace")
                            if isinstance(b, bytes) else b, otypes=[object])(array).tolist()
    return array.tolist()
