"""Every bad request in serving/README.md's table, sent to the development server (which loads
the version the way TF Serving does): each gets the answer the table says, and the server
keeps serving. Also: a version whose warmup fails is refused and the previous one keeps
serving."""

import base64
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2, prediction_service_pb2_grpc

from tf_gru4rec.config import TrainConfig
from tf_gru4rec.data.vocabulary import ItemVocabulary
from tf_gru4rec.serving import rest
from tf_gru4rec.serving.capi import CApiBundle
from tf_gru4rec.serving.client import to_tensor_proto
from tf_gru4rec.serving.dev_server import DevServer
from tf_gru4rec.serving.export import WARMUP_FILE, export_model
from tf_gru4rec.serving.graph.limits import ServingLimits
from tf_gru4rec.training import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_ITEMS, K, UNITS = 20, 3, 6
RAW_IDS = [str(700 + i) for i in range(N_ITEMS)]
LIMITS = ServingLimits(max_request_rows=100, max_id_bytes=64)


@pytest.fixture(scope="module")
def model():
    config = TrainConfig(layers=[UNITS], batch_size=4, n_sample=0, jit_compile=False, seed=9)
    return build_model(config, N_ITEMS, item_support=np.arange(N_ITEMS) + 1)


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    base = tmp_path_factory.mktemp("abuse") / "gru4rec"
    export_model(model, ItemVocabulary(np.asarray(RAW_IDS, dtype=object)), str(base), k=K,
                 limits=LIMITS)
    with DevServer(str(base), port=0, rest_port=0, rest_timeout=1.0) as running:
        yield running


def tensor(dtype, dims, **fields) -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto(
        dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]), **fields)


def good_inputs():
    return {"session_id": to_tensor_proto(["s"]), "item_id": to_tensor_proto([RAW_IDS[1]])}


def grpc_request(signature="serving_default", model="gru4rec", version=None, **inputs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(value)
    return request


def _with(**changes):
    inputs = good_inputs()
    inputs.update(changes)
    return {k: v for k, v in inputs.items() if v is not None}


_STATE = to_tensor_proto(np.zeros((1, UNITS), np.float32))
_NAN_STATE = to_tensor_proto(np.full((1, UNITS), np.nan, np.float32))
_BROKEN = to_tensor_proto(np.zeros((1, UNITS), np.float32))
_BROKEN.tensor_content = b"\x00\x01\x02"

# Table row id -> (gRPC request, expected status code, text the message contains).
GRPC_CASES = {
    "wrong dtype": (grpc_request(**_with(session_id=to_tensor_proto(np.ones(1, np.float32)))),
                    "INVALID_ARGUMENT", "should be string"),
    "missing input": (grpc_request(**_with(item_id=None)), "INVALID_ARGUMENT", "expects inputs"),
    "extra input": (grpc_request(**_with(extra=to_tensor_proto(["x"]))), "INVALID_ARGUMENT",
                    "expects inputs"),
    "row counts differ": (grpc_request(**_with(item_id=to_tensor_proto(RAW_IDS[:3]))),
                          "INVALID_ARGUMENT", "`item_id` has 3 rows but `session_id` has 1"),
    "wrong state width": (grpc_request("step", item_id=to_tensor_proto(["x"]),
                                       state=to_tensor_proto(np.zeros((1, 2), np.float32))),
                          "INVALID_ARGUMENT", f"`state` should have shape [B, {UNITS}]"),
    "wrong rank": (grpc_request(**_with(session_id=to_tensor_proto([["s"]]))),
                   "INVALID_ARGUMENT", "`session_id` should have shape [B]"),
    "unknown signature": (grpc_request("nope", **good_inputs()), "INVALID_ARGUMENT",
                          "not found in signature def"),
    "content does not match shape": (grpc_request("step", item_id=to_tensor_proto(["x"]),
                                                  state=_BROKEN), "INVALID_ARGUMENT",
                                     "not a valid TensorProto"),
    "DT_VARIANT tensor": (grpc_request(**_with(item_id=tensor(types_pb2.DT_VARIANT, [1]))),
                          "INVALID_ARGUMENT", "DT_VARIANT"),
    "DT_RESOURCE tensor": (grpc_request(**_with(item_id=tensor(types_pb2.DT_RESOURCE, [1]))),
                           "INVALID_ARGUMENT", "DT_RESOURCE"),
    "negative dimension": (grpc_request(**_with(item_id=tensor(types_pb2.DT_STRING, [-5],
                                                               string_val=[b"x"]))),
                           "INVALID_ARGUMENT", "negative dimension"),
    "absurd dimension": (grpc_request(**_with(item_id=tensor(types_pb2.DT_STRING, [1 << 40],
                                                             string_val=[b"x"]))),
                         "INVALID_ARGUMENT", "elements"),
    "rows over max_request_rows (fill convention)": (
        grpc_request(session_id=tensor(types_pb2.DT_STRING, [100_000], string_val=[b"s"]),
                     item_id=tensor(types_pb2.DT_STRING, [100_000], string_val=[b"x"])),
        "INVALID_ARGUMENT", "max_request_rows"),
    "session id over max_id_bytes": (grpc_request(**_with(session_id=to_tensor_proto(
        ["s" * 1_000_000]))), "INVALID_ARGUMENT", "max_id_bytes"),
    "non-finite state": (grpc_request("step", item_id=to_tensor_proto(["x"]), state=_NAN_STATE),
                         "INVALID_ARGUMENT", "finite"),
    "state outside [-1, 1]": (grpc_request("step", item_id=to_tensor_proto(["x"]),
                                           state=to_tensor_proto(np.full((1, UNITS), 3e38,
                                                                         np.float32))),
                              "INVALID_ARGUMENT", "within [-1, 1]"),
    "empty session id": (grpc_request(**_with(session_id=to_tensor_proto([""]))),
                         "INVALID_ARGUMENT", "a `session_id` is empty"),
    "click position over the bound": (grpc_request("click", position=to_tensor_proto(
        np.array([2**63 - 1], np.int64)), **good_inputs()), "INVALID_ARGUMENT", "at most"),
    "item ids of rank 2": (
        grpc_request("lookup", item_id=to_tensor_proto([RAW_IDS[:2], RAW_IDS[:2]])),
        "INVALID_ARGUMENT", "`item_id` should have shape [B]; received shape [2 2]"),
    "negative click position": (grpc_request("click", position=to_tensor_proto(
        np.array([-1], np.int64)), **good_inputs()), "INVALID_ARGUMENT", "non-negative"),
    "unknown model": (grpc_request(model="other", **good_inputs()), "NOT_FOUND", "other"),
    "unknown version": (grpc_request(version=99, **good_inputs()), "NOT_FOUND", "99"),
    "message over 64 MB": (grpc_request(**_with(session_id=to_tensor_proto(
        ["s" * (65 << 20)]))), "RESOURCE_EXHAUSTED", ""),
}


@pytest.mark.parametrize("case", sorted(GRPC_CASES))
def test_bad_grpc_request(server, case):
    request, code, text = GRPC_CASES[case]
    with grpc.insecure_channel(server.target, options=[
            ("grpc.max_send_message_length", 128 << 20)]) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(request, timeout=30)
    assert info.value.code().name == code, info.value.details()
    assert text in (info.value.details() or ""), info.value.details()
    assert_still_serving(server)


def test_shape_errors_read_as_through_the_c_api(server):
    """The graph's shape messages reach gRPC clients of the development server as they come
    out of a session loaded through TensorFlow's C API (as TF Serving loads it)."""
    cases = [("lookup", {"item_id": np.asarray([RAW_IDS[:2]] * 2, dtype=object)}),
             ("step", {"item_id": np.asarray(["x"], dtype=object),
                       "state": np.zeros(UNITS, np.float32)}),
             ("serving_default", {"session_id": np.asarray([["s"]], dtype=object),
                                  "item_id": np.asarray(["x"], dtype=object)})]
    with CApiBundle(server.manager.get("gru4rec", None).path) as capi, \
            grpc.insecure_channel(server.target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for signature, inputs in cases:
            with pytest.raises(tf.errors.InvalidArgumentError) as expected:
                capi.run(signature, inputs)
            with pytest.raises(grpc.RpcError) as got:
                stub.Predict(grpc_request(signature, **{k: to_tensor_proto(v)
                                                        for k, v in inputs.items()}), timeout=30)
            assert got.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert got.value.details() == expected.value.message.strip().splitlines()[0]
            assert "should have shape" in got.value.details()


def assert_still_serving(server):
    with grpc.insecure_channel(server.target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        out = stub.Predict(grpc_request("lookup", item_id=to_tensor_proto(RAW_IDS[:2])),
                           timeout=30)
    assert list(out.outputs["known"].bool_val) == [True, True]


# ---------------------------------------------------------------------- REST
def raw_http(server, head: bytes, body: bytes = b"", read_timeout: float = 10.0) -> tuple:
    """Send raw bytes; returns (status, JSON body or None). status is None when the server
    closed the connection without answering."""
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=read_timeout) as s:
        s.sendall(head + body)
        data = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
                if b"\r\n\r\n" in data:
                    header, _, rest = data.partition(b"\r\n\r\n")
                    match = re.search(rb"Content-Length: (\d+)", header)
                    if match and len(rest) >= int(match[1]):
                        break
        except TimeoutError:
            pass
    if not data:
        return None, None
    header, _, rest = data.partition(b"\r\n\r\n")
    return int(header.split()[1]), json.loads(rest) if rest else None


def post(path: str, body: bytes, length: str | None = "auto") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    if length == "auto":
        length = str(len(body))
    if length is not None:
        head += f"Content-Length: {length}\r\n"
    return (head + "\r\n").encode()


PREDICT = "/v1/models/gru4rec:predict"
REST_CASES = {
    "invalid JSON": (post(PREDICT, b"{nope"), b"{nope", 400, "JSON parse error"),
    "body not an object": (post(PREDICT, b"[1, 2]"), b"[1, 2]", 400, "JSON object"),
    "deeply nested JSON": (post(PREDICT, b"[" * 100_000 + b"]" * 100_000),
                           b"[" * 100_000 + b"]" * 100_000, 400, "nested deeper"),
    "number out of range": (
        post(PREDICT, b'{"signature_name": "step", "inputs": {"item_id": ["x"], '
                      b'"state": [[1e999, 0, 0, 0, 0, 0]]}}'),
        b'{"signature_name": "step", "inputs": {"item_id": ["x"], '
        b'"state": [[1e999, 0, 0, 0, 0, 0]]}}', 400, "out of range"),
    "huge integer": (
        post(PREDICT, b'{"signature_name": "step", "inputs": {"item_id": ["x"], "state": [[' +
             b"9" * 400 + b', 0, 0, 0, 0, 0]]}}'),
        b'{"signature_name": "step", "inputs": {"item_id": ["x"], "state": [[' + b"9" * 400 +
        b', 0, 0, 0, 0, 0]]}}', 400, "input 'state'"),
    "NaN literal": (post(PREDICT, b'{"inputs": {"session_id": ["a"], "item_id": [NaN]}}'),
                    b'{"inputs": {"session_id": ["a"], "item_id": [NaN]}}', 400, "NaN"),
    "strings where numbers belong": (
        post(PREDICT, b'{"signature_name": "step", "inputs": {"item_id": ["x"], '
                      b'"state": [["a", "b", "c", "d", "e", "f"]]}}'),
        b'{"signature_name": "step", "inputs": {"item_id": ["x"], '
        b'"state": [["a", "b", "c", "d", "e", "f"]]}}', 400, "input 'state'"),
    "numbers where strings belong": (post(PREDICT, b'{"inputs": {"session_id": [1], '
                                                   b'"item_id": ["a"]}}'),
                                     b'{"inputs": {"session_id": [1], "item_id": ["a"]}}', 400,
                                     "expected strings"),
    "instances with different keys": (
        post(PREDICT, b'{"instances": [{"session_id": "a", "item_id": "b"}, {"x": 1}]}'),
        b'{"instances": [{"session_id": "a", "item_id": "b"}, {"x": 1}]}', 400, "same keys"),
    "negative Content-Length": (post(PREDICT, b"", "-5"), b"", 400, "Content-Length"),
    "absurd Content-Length": (post(PREDICT, b"", str(10 ** 15)), b"", 413, "limit"),
    "no Content-Length": (post(PREDICT, b"", None), b"", 411, "Content-Length"),
    "unknown path": (post("/v1/nothing", b"{}"), b"{}", 404, "Malformed request"),
    "unknown model over REST": (post("/v1/models/other:predict", b"{}"), b"{}", 404, "other"),
    "bad base64": (post(PREDICT, b'{"signature_name": "lookup", "inputs": {"item_id": '
                                 b'[{"b64": "not base64!"}]}}'),
                   b'{"signature_name": "lookup", "inputs": {"item_id": [{"b64": "not base64!"}]}}',
                   400, "input 'item_id'"),
    "session_count without probe": (
        post(PREDICT, b'{"signature_name": "session_count", "inputs": {}}'),
        b'{"signature_name": "session_count", "inputs": {}}', 400, "probe"),
}


@pytest.mark.parametrize("case", sorted(REST_CASES))
def test_bad_rest_request(server, case):
    head, body, status, text = REST_CASES[case]
    got, answer = raw_http(server, head, body)
    assert got == status, answer
    assert text in answer["error"], answer
    assert_still_serving(server)


def test_body_shorter_than_its_content_length_does_not_hold_a_thread(server):
    """A client announces 1000 bytes and sends 10: the handler gives up after the socket
    timeout (1 s here), and other requests are served meanwhile."""
    threads_before = threading.active_count()
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as stalled:
        stalled.sendall(post(PREDICT, b"", "1000") + b'{"inputs":')
        assert_still_serving(server)
        status, _ = raw_http(server, post(PREDICT, b'{"signature_name": "lookup", '
                                                   b'"inputs": {"item_id": ["700"]}}'),
                             b'{"signature_name": "lookup", "inputs": {"item_id": ["700"]}}')
        assert status == 200
        stalled.settimeout(5)
        assert stalled.recv(65536) == b""  # the server closed the stalled connection
    deadline = time.time() + 5
    while threading.active_count() > threads_before and time.time() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= threads_before


def test_body_over_the_limit_gets_413_not_a_broken_connection(server):
    """A client that sends a 70 MB body whole (as urllib does) reads a 413 JSON answer; one
    that asks first (`Expect: 100-continue`, as curl does) gets it before sending."""
    url = f"http://127.0.0.1:{server.rest_port}{PREDICT}"
    body = b'{"inputs": {"item_id": ["' + b"x" * (70 << 20) + b'"]}}'
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=60)
    assert info.value.code == 413
    assert "the limit is" in json.loads(info.value.read())["error"]
    head = post(PREDICT, b"", str(len(body)))[:-2] + b"Expect: 100-continue\r\n\r\n"
    status, answer = raw_http(server, head)
    assert status == 413 and "the limit is" in answer["error"]
    assert_still_serving(server)


def rest_predict(server, body: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}{PREDICT}",
                                     data=json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode()
    assert "NaN" not in text and "Infinity" not in text
    return json.loads(text)


def test_rest_speaks_tf_serving_json(server):
    """b64 strings, session_count, and the row format of a one-output signature, as TF
    Serving's JSON API has them."""
    encoded = base64.b64encode(RAW_IDS[2].encode()).decode()
    out = rest_predict(server, {"signature_name": "lookup",
                                "inputs": {"item_id": [{"b64": encoded}, "nope"]}})
    assert out == {"outputs": [True, False]}
    out = rest_predict(server, {"inputs": {"session_id": [{"b64": base64.b64encode(
        b"rest-b64").decode()}], "item_id": [RAW_IDS[3]]}})
    assert out["outputs"]["known"] == [True]
    counted = rest_predict(server, {"signature_name": "session_count", "inputs": {"probe": [0]}})
    assert counted["outputs"][0] >= 1
    rows = rest_predict(server, {"signature_name": "session_count", "instances": [{"probe": 0}]})
    assert rows == {"predictions": counted["outputs"]}
    rows = rest_predict(server, {"signature_name": "lookup", "instances": [{"item_id": "nope"}]})
    assert rows == {"predictions": [False]}


def test_non_finite_floats_are_never_bare_json():
    assert rest._finite_json({"a": [1.5, float("nan"), [float("inf"), -float("inf")]], "b": "x"}) \
        == {"a": [1.5, "NaN", ["Infinity", "-Infinity"]], "b": "x"}


def test_every_row_of_the_readme_table_has_a_test():
    with open(os.path.join(REPO, "serving", "README.md")) as f:
        text = f.read()
    table = text[text.index("| bad request |"):]
    rows = [line.split("|")[1].strip() for line in table.splitlines()[2:]
            if line.startswith("|")]
    tested = set(GRPC_CASES) | set(REST_CASES) | {
        "REST body shorter than its Content-Length", "REST body over 64 MB",
        "version whose warmup fails"}
    assert set(rows) == tested, set(rows) ^ tested


# ---------------------------------------------------------------------- warmup
def test_a_version_whose_warmup_fails_is_refused_and_the_previous_one_keeps_serving(
        model, tmp_path, caplog):
    base = tmp_path / "gru4rec"
    vocabulary = ItemVocabulary(np.asarray(RAW_IDS, dtype=object))
    export_model(model, vocabulary, str(base), k=K)
    second = export_model(model, vocabulary, str(base), k=K, warmup=False)
    bad = predict_pb2.PredictRequest()
    bad.model_spec.signature_name = "serving_default"
    bad.inputs["session_id"].CopyFrom(to_tensor_proto(["a", "b"]))
    bad.inputs["item_id"].CopyFrom(to_tensor_proto([RAW_IDS[0]]))  # row counts differ
    import tensorflow as tf

    with tf.io.TFRecordWriter(os.path.join(second, "assets.extra", WARMUP_FILE)) as writer:
        writer.write(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=bad)).SerializeToString())
    hidden = tmp_path / "hidden-2"
    shutil.move(second, hidden)  # the server starts with version 1 only
    with caplog.at_level(logging.INFO, logger="tf_gru4rec.serving.dev_server"):
        with DevServer(str(base), port=0, poll_seconds=0.2) as running:
            assert running.manager.get("gru4rec", None).version == 1
            shutil.move(hidden, second)
            deadline = time.time() + 20
            while 2 not in running.manager.refused and time.time() < deadline:
                time.sleep(0.1)
            assert 2 in running.manager.refused
            assert running.manager.get("gru4rec", None).version == 1
            assert_still_serving(running)
    refusals = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("version 2 refused" in m and "warmup request 1 (serving_default) failed" in m
               and "still serving version 1" in m for m in refusals), refusals
    # Without a good version to fall back on, the server does not start, and says why.
    shutil.rmtree(base / "1")
    with pytest.raises(FileNotFoundError, match="version 2: warmup request 1"):
        DevServer(str(base), port=0)
