"""Tests for serving: the container config files, the development server, the clients and the
replay that must equal offline evaluation."""

import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,
)
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from tf_gru4rec import cli
from tf_gru4rec.config import TrainConfig
from tf_gru4rec.data.io import write_events
from tf_gru4rec.data.preprocess import drop_short_sessions
from tf_gru4rec.data.session_log import SessionLog
from tf_gru4rec.data.synthetic import SyntheticConfig, generate_sessions
from tf_gru4rec.data.vocabulary import ItemVocabulary
from tf_gru4rec.evaluation import evaluate
from tf_gru4rec.serving import PredictionClient, RestClient, ServingError, StatelessSession
from tf_gru4rec.serving.client import pad_sessions, to_tensor_proto
from tf_gru4rec.serving.dev_server import DevServer
from tf_gru4rec.serving.export import export_model
from tf_gru4rec.serving.replay import replay
from tf_gru4rec.training import build_model, save_model_dir, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVING = os.path.join(REPO, "serving")
N_ITEMS, K, UNITS = 60, 7, 16
RAW_IDS = np.arange(N_ITEMS, dtype=np.int64) * 3 + 500


def ids(indices) -> list[str]:
    return [str(RAW_IDS[i]) for i in indices]


# ---------------------------------------------------------------------- serving/ config files
def _tf_serving_config_protos():
    """BatchingParameters and MonitoringConfig, which the tensorflow-serving-api wheel does not
    ship: built from the field names and numbers of the upstream .proto files
    (servables/tensorflow/session_bundle_config.proto, config/monitoring_config.proto)."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(wrappers_pb2.DESCRIPTOR.serialized_pb))
    f = descriptor_pb2.FileDescriptorProto(
        name="tf_gru4rec_test/tfs_config.proto", package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"])
    F = descriptor_pb2.FieldDescriptorProto
    batching = f.message_type.add(name="BatchingParameters")
    for number, name, wrapper in ((1, "max_batch_size", "Int64Value"),
                                  (2, "batch_timeout_micros", "Int64Value"),
                                  (3, "max_enqueued_batches", "Int64Value"),
                                  (4, "num_batch_threads", "Int64Value"),
                                  (5, "thread_pool_name", "StringValue")):
        batching.field.add(name=name, number=number, type=F.TYPE_MESSAGE,
                           label=F.LABEL_OPTIONAL, type_name=f".google.protobuf.{wrapper}")
    batching.field.add(name="allowed_batch_sizes", number=6, type=F.TYPE_INT64,
                       label=F.LABEL_REPEATED)
    batching.field.add(name="pad_variable_length_inputs", number=7, type=F.TYPE_BOOL,
                       label=F.LABEL_OPTIONAL)
    prometheus = f.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    monitoring = f.message_type.add(name="MonitoringConfig")
    monitoring.field.add(name="prometheus_config", number=1, type=F.TYPE_MESSAGE,
                         label=F.LABEL_OPTIONAL, type_name=".tensorflow.serving.PrometheusConfig")
    pool.Add(f)
    return (message_factory.GetMessageClass(pool.FindMessageTypeByName(
        "tensorflow.serving.BatchingParameters")),
            message_factory.GetMessageClass(pool.FindMessageTypeByName(
                "tensorflow.serving.MonitoringConfig")))


def _read(name: str) -> str:
    with open(os.path.join(SERVING, name)) as f:
        return f.read()


def test_models_config_parses():
    config = text_format.Parse(_read("models.config"), model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert model.name == "gru4rec" and model.base_path == "/models/gru4rec"
    assert model.model_platform == "tensorflow"
    assert model.model_version_policy.latest.num_versions == 1


def test_batching_and_monitoring_configs_parse():
    batching_cls, monitoring_cls = _tf_serving_config_protos()
    batching = text_format.Parse(_read("batching_parameters.txt"), batching_cls())
    assert batching.max_batch_size.value > 0 and batching.num_batch_threads.value > 0
    assert batching.pad_variable_length_inputs
    # Padding a batch to an allowed size repeats a row: it would click twice in one session.
    assert list(batching.allowed_batch_sizes) == []
    monitoring = text_format.Parse(_read("monitoring.config"), monitoring_cls())
    assert monitoring.prometheus_config.enable
    assert monitoring.prometheus_config.path.startswith("/")


def test_container_files_agree():
    dockerfile, compose, readme = _read("Dockerfile"), _read("docker-compose.yml"), _read(
        "README.md")
    major_minor = ".".join(tf.__version__.split(".")[:2])
    tag = re.search(r"ARG TF_SERVING_TAG=(\S+)", dockerfile).group(1)
    assert tag == f"{major_minor}.0-gpu"
    assert "FROM tensorflow/serving:${TF_SERVING_TAG}" in dockerfile
    for name in ("models.config", "batching_parameters.txt", "monitoring.config"):
        assert f"=/config/{name}" in dockerfile and name in dockerfile.split("COPY", 1)[1]
    assert "HEALTHCHECK" in dockerfile and "healthcheck.sh" in dockerfile
    assert f"TF_SERVING_TAG: {major_minor}.0-gpu" in compose
    assert f"TF_SERVING_TAG: {major_minor}.0\n" in compose
    assert compose.count(":/models/gru4rec:ro") == 2 and "capabilities: [gpu]" in compose
    for command in ("docker build", "docker run", "--gpus all", "docker compose",
                    "tf-gru4rec export", "sticky", "allowed_batch_sizes"):
        assert command.lower() in readme.lower(), command


# ---------------------------------------------------------------------- a served model
@pytest.fixture(scope="module")
def model():
    config = TrainConfig(layers=[UNITS], batch_size=4, n_sample=0, jit_compile=False, seed=2)
    support = np.random.default_rng(1).integers(1, 100, N_ITEMS)
    return build_model(config, N_ITEMS, item_support=support)


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    base = tmp_path_factory.mktemp("served") / "gru4rec"
    export_model(model, ItemVocabulary(RAW_IDS), str(base), k=K)
    srv = DevServer(str(base), port=0, rest_port=0, poll_seconds=0.2).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    with PredictionClient(server.target, "gru4rec", timeout=10) as c:
        yield c


def keras_top_k(model, items):
    states = [tf.zeros((1, UNITS))]
    for i in items:
        hidden, states = model.step(tf.constant([i], tf.int32), states)
    scores = model.score_all(hidden).numpy()[0]
    top = np.argsort(-scores, kind="stable")[:K]
    return ids(top), scores[top]


def test_grpc_round_trip_matches_keras(client, model, server):
    assert int(server.manager.get("gru4rec", None).session_count()) == 0  # warmup ended
    items = [3, 14, 15, 9]
    for t in range(len(items)):
        out = client.click(["rt"], ids([items[t]]))
        expected_ids, expected_scores = keras_top_k(model, items[: t + 1])
        assert list(out["item_ids"][0]) == expected_ids
        np.testing.assert_allclose(out["scores"][0], expected_scores, atol=1e-5)
        assert out["known"].tolist() == [True]
    assert client.end_sessions(["rt", "never-seen"]).tolist() == [True, False]


def test_clicks_with_positions_are_retry_safe_over_grpc_and_rest(client, server):
    rest = RestClient(f"http://127.0.0.1:{server.rest_port}", "gru4rec", timeout=10)
    for name, c in (("grpc", client), ("rest", rest)):
        first = c.click([f"pos-{name}"], ids([3]), positions=[0])
        retry = c.click([f"pos-{name}"], ids([3]), positions=[0])
        assert first["applied"].tolist() == [True] and retry["applied"].tolist() == [False]
        np.testing.assert_array_equal(first["item_ids"], retry["item_ids"])
        assert c.click([f"pos-{name}"], ids([4]), positions=[1])["applied"].tolist() == [True]


def test_metadata_and_status(client):
    metadata = client.metadata()
    assert set(metadata) == {"serving_default", "end_session", "step", "recommend", "rank",
                             "lookup", "session_count", "click"}
    assert metadata["serving_default"]["inputs"] == {"session_id": ("string", (-1,)),
                                                     "item_id": ("string", (-1,))}
    assert metadata["step"]["inputs"]["state"] == ("float32", (-1, UNITS))
    assert metadata["serving_default"]["outputs"]["item_ids"] == ("string", (-1, K))
    assert client.status() == [{"version": 1, "state": "AVAILABLE", "error_code": 0,
                                "error_message": ""}]
    assert client.is_available()


def _raw_predict(server, request):
    with grpc.insecure_channel(server.target) as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=10)


def test_malformed_requests_get_invalid_argument_and_the_server_keeps_serving(client, server):
    bad = [
        ({"session_id": np.array([1.0, 2.0], np.float32), "item_id": ["a", "b"]},
         "serving_default"),
        ({"session_id": ["a"]}, "serving_default"),  # missing input
        ({"session_id": ["a"], "item_id": ["b"], "extra": ["c"]}, "serving_default"),
        ({"session_id": ["a", "b"], "item_id": ["x", "y", "z"]}, "serving_default"),
        ({"item_id": ["a"], "state": np.zeros((1, UNITS + 3), np.float32)}, "step"),
        ({"item_id": ["a"], "state": np.zeros((1, UNITS), np.float64)}, "step"),  # dtype
        ({"session_id": [["a"]], "item_id": [["b"]]}, "serving_default"),  # wrong rank
        ({"item_id": ["a"]}, "no_such_signature"),
    ]
    for inputs, signature in bad:
        with pytest.raises(ServingError) as info:
            client.predict(inputs, signature)
        assert info.value.code == "INVALID_ARGUMENT", (signature, inputs, info.value)
    # A TensorProto whose content does not match its shape.
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "gru4rec"
    request.inputs["session_id"].CopyFrom(to_tensor_proto(["a"]))
    broken = to_tensor_proto(np.zeros((1, UNITS), np.float32))
    broken.tensor_content = b"\x00\x01\x02"
    request.inputs["item_id"].CopyFrom(broken)
    with pytest.raises(grpc.RpcError) as info:
        _raw_predict(server, request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(ServingError) as info:
        PredictionClient(server.target, "other-model").click(["a"], ["b"])
    assert info.value.code == "NOT_FOUND"
    with pytest.raises(ServingError) as info:
        PredictionClient(server.target, "gru4rec", version=99).status()
    assert info.value.code == "NOT_FOUND"
    assert client.click(["alive"], ids([1]))["known"].tolist() == [True]  # still serving


def test_stateless_session_equals_the_stateful_path(client, server):
    items = [5, 6, 7, 50]
    grpc_session = StatelessSession(client)
    rest_session = StatelessSession(RestClient(f"http://127.0.0.1:{server.rest_port}"),
                                    state_size=UNITS, exclude_seen=False)
    for item in ids(items):
        stateful = client.click(["stateless-ref"], [item])
        for session in (grpc_session, rest_session):
            out = session.click(item)
            assert out["item_ids"] == list(stateful["item_ids"][0])
            np.testing.assert_allclose(out["scores"], stateful["scores"][0], atol=1e-6)
    whole = client.recommend([ids(items), ids(items[:1])])
    assert list(whole["item_ids"][0]) == grpc_session.click("unknown-item")["item_ids"]
    first = client.click(["stateless-first"], ids(items[:1]))
    np.testing.assert_array_equal(whole["item_ids"][1], first["item_ids"][0])


def test_rest_predict_status_and_errors(server):
    rest = RestClient(f"http://127.0.0.1:{server.rest_port}", "gru4rec", timeout=10)
    out = rest.predict({"session_item_ids": pad_sessions([ids([1, 2])])}, "recommend")
    assert out["item_ids"].shape == (1, K) and out["scores"].dtype == np.float32
    assert rest.status()[0]["state"] == "AVAILABLE" and rest.is_available()
    clicked = rest.click(["rest-1"], ids([4]))
    assert clicked["known"].tolist() == [True]
    # Row format ("instances") as TF Serving accepts it.
    import urllib.request

    body = json.dumps({"signature_name": "lookup", "instances": [{"item_id": ids([1])[0]},
                                                                  {"item_id": "x"}]}).encode()
    with urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{server.rest_port}/v1/models/gru4rec:predict", data=body),
            timeout=10) as response:
        # One output: TF Serving lists the values without the output's name.
        assert json.loads(response.read()) == {"predictions": [True, False]}
    with pytest.raises(ServingError) as info:
        rest.predict({"session_id": [1], "item_id": ["a"]})
    assert info.value.code == "INVALID_ARGUMENT"
    with pytest.raises(ServingError) as info:
        RestClient(f"http://127.0.0.1:{server.rest_port}", "nope").status()
    assert info.value.code == "NOT_FOUND"


def test_healthcheck_script_against_the_rest_endpoint(server):
    script = os.path.join(SERVING, "healthcheck.sh")
    env = dict(os.environ, REST_PORT=str(server.rest_port), MODEL_NAME="gru4rec")
    assert subprocess.run(["bash", script], env=env, timeout=10).returncode == 0
    env["MODEL_NAME"] = "missing"
    assert subprocess.run(["bash", script], env=env, timeout=10,
                          stderr=subprocess.DEVNULL).returncode != 0


# ---------------------------------------------------------------------- client errors
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _SlowService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def Predict(self, request, context):
        time.sleep(1.0)
        return predict_pb2.PredictResponse()


def test_client_errors_are_clear():
    with pytest.raises(ValueError, match="host:port"):
        PredictionClient("localhost")
    with pytest.raises(ValueError, match="timeout"):
        PredictionClient("localhost:1", timeout=0)
    with pytest.raises(ValueError, match="http"):
        RestClient("localhost:8501")
    port = _free_port()
    with pytest.raises(ServingError) as info:
        PredictionClient(f"127.0.0.1:{port}", timeout=2).click(["a"], ["b"])
    assert info.value.code == "UNAVAILABLE" and f"127.0.0.1:{port}" in str(info.value)
    with pytest.raises(ServingError) as info:
        RestClient(f"http://127.0.0.1:{port}", timeout=2).status()
    assert info.value.code == "UNAVAILABLE"
    # Deadlines: a gRPC server that answers too slowly, an HTTP server that never answers.
    slow = grpc.server(__import__("concurrent.futures").futures.ThreadPoolExecutor(2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_SlowService(), slow)
    slow_port = slow.add_insecure_port("127.0.0.1:0")
    slow.start()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        with pytest.raises(ServingError) as info:
            PredictionClient(f"127.0.0.1:{slow_port}", timeout=0.2).click(["a"], ["b"])
        assert info.value.code == "DEADLINE_EXCEEDED" and "0.2s" in info.value.message
        with pytest.raises(ServingError) as info:
            RestClient(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.3).status()
        assert info.value.code == "DEADLINE_EXCEEDED"
    finally:
        slow.stop(0)
        silent.close()


def test_http_error_bodies_become_messages():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.dumps({"error": "Serving signature name: \"x\" not found"}).encode()
            self.send_response(400)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(ServingError) as info:
            RestClient(f"http://127.0.0.1:{httpd.server_address[1]}").predict({"a": [1]}, "x")
        assert info.value.code == "INVALID_ARGUMENT" and "not found" in info.value.message
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_client_module_needs_no_training_code():
    code = ("import sys, tf_gru4rec.serving.client; "
            "print(sorted(m for m in sys.modules if m.startswith('tf_gru4rec')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3"),
                         timeout=120, check=True).stdout
    assert out.strip() == str(["tf_gru4rec", "tf_gru4rec.serving", "tf_gru4rec.serving.client"])


# ---------------------------------------------------------------------- replay == evaluate
@pytest.fixture(scope="module")
def synthetic_served(tmp_path_factory):
    """A briefly trained model with a few exact score ties, its export, a server and the test
    file (which has events of items unknown to the model)."""
    root = tmp_path_factory.mktemp("replay")
    events = generate_sessions(SyntheticConfig(n_items=150, n_sessions=700, n_intents=10,
                                               seed=11))
    sessions = events["SessionId"].unique()
    train_events = events[events["SessionId"].isin(sessions[:550])]
    test_events = events[events["SessionId"].isin(sessions[550:])].copy()
    test_events.loc[test_events.index[::17], "ItemId"] = 42  # unknown to the model
    vocabulary = ItemVocabulary.from_events(train_events["ItemId"].to_numpy())
    config = TrainConfig(layers=[24], batch_size=16, n_sample=32, n_epochs=1, jit_compile=False,
                         seed=4, eval_batch_size=32)
    trained = train(config, SessionLog.from_events(train_events, vocabulary), verbose=0).model
    weights = trained.item_scores.item_weights.numpy()
    bias = trained.item_scores.item_bias.numpy()
    for a, b in ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9)):  # exact ties between item pairs
        weights[b], bias[b] = weights[a], bias[a]
    trained.item_scores.item_weights.assign(weights)
    trained.item_scores.item_bias.assign(bias)
    model_dir, test_file = str(root / "model"), str(root / "test.tsv")
    save_model_dir(model_dir, trained, vocabulary, config)
    write_events(test_events, test_file)
    assert cli.main(["export", "--model", model_dir, "--base", str(root / "gru4rec"),
                     "--k", "5"]) == 0
    srv = DevServer(str(root / "gru4rec"), port=0).start()
    yield {"server": srv, "model": trained, "vocabulary": vocabulary, "model_dir": model_dir,
           "test_file": test_file, "test_events": test_events}
    srv.stop()


def _offline_log(test_events, vocabulary):
    known = vocabulary.lookup(test_events["ItemId"].to_numpy()) >= 0
    return SessionLog.from_events(drop_short_sessions(test_events[known], 2), vocabulary)


def _metrics(result):
    return {k: v for k, v in result.items() if "@" in k or k == "test_events"}


def test_replay_cli_equals_evaluate_cli(synthetic_served, capsys):
    s = synthetic_served
    assert cli.main(["evaluate", "--model", s["model_dir"], "--test", s["test_file"],
                     "--batch-size", "32", "--json"]) == 0
    offline = json.loads(capsys.readouterr().out)
    assert cli.main(["replay", "--target", s["server"].target, "--test", s["test_file"],
                     "--batch-size", "32", "--json"]) == 0
    served = json.loads(capsys.readouterr().out)
    assert offline["test_events"] > 300
    assert _metrics(served) == _metrics(offline)  # exactly, every cutoff


@pytest.mark.parametrize("tie_mode", ["standard", "median"])
def test_replay_equals_evaluate_for_every_tie_rule(synthetic_served, tie_mode):
    s = synthetic_served
    log = _offline_log(s["test_events"], s["vocabulary"])
    offline = evaluate(s["model"], log, (1, 3, 20), tie_mode, batch_size=24)
    served = replay(s["server"].target, s["test_events"], cutoffs=(1, 3, 20), tie_mode=tie_mode,
                    batch_size=24)
    assert _metrics(served) == _metrics(offline)
    # Replay leaves no session behind.
    assert int(s["server"].manager.get("gru4rec", None).session_count()) == 0


def test_replay_reports_an_unreachable_server(synthetic_served):
    with pytest.raises(ServingError) as info:
        replay(f"127.0.0.1:{_free_port()}", synthetic_served["test_events"], timeout=2)
    assert info.value.code == "UNAVAILABLE"


def test_replay_waits_for_a_server_that_is_still_starting(synthetic_served):
    """`serve &` then `replay` at once: replay waits until the model is AVAILABLE."""
    s = synthetic_served
    base = os.path.join(os.path.dirname(s["model_dir"]), "gru4rec")
    port = _free_port()
    late = {}

    def start_late():
        time.sleep(1.5)
        late["server"] = DevServer(base, port=port).start()

    starter = threading.Thread(target=start_late)
    starter.start()
    try:
        served = replay(f"127.0.0.1:{port}", s["test_events"], batch_size=32, wait=300)
    finally:
        starter.join()
        if "server" in late:
            late["server"].stop()
    log = _offline_log(s["test_events"], s["vocabulary"])
    assert _metrics(served) == _metrics(evaluate(s["model"], log, batch_size=32))


@pytest.mark.slow  # default suite time (README: Tests)
def test_loading_a_version_prints_no_tensorflow_deprecation_notice(synthetic_served):
    """`serve` loads with TF Serving's v1 loader and reads the warmup records: TensorFlow's
    notices that those calls are deprecated are not for the user (a fresh process: each
    notice is printed once per process)."""
    version = os.path.join(os.path.dirname(synthetic_served["model_dir"]), "gru4rec", "1")
    code = ("import sys; from tf_gru4rec.serving.bundle import SessionBundle; "
            "b = SessionBundle(sys.argv[1]); print(b.warmup())")
    done = subprocess.run([sys.executable, "-c", code, version], capture_output=True,
                          text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout) > 0  # the warmup records were read and run
    assert "deprecat" not in done.stderr.lower(), done.stderr[-2000:]


def test_replay_without_a_server_says_what_it_waited_for(tmp_path, capsys):
    test_file = tmp_path / "test.tsv"
    test_file.write_text("SessionId\tItemId\tTime\n1\t2\t3\n1\t4\t5\n")
    port = _free_port()
    assert cli.main(["replay", "--target", f"127.0.0.1:{port}", "--test", str(test_file),
                     "--wait", "1"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert "after waiting 1 s" in err[0] and f"127.0.0.1:{port}" in err[0]
    assert "tf-gru4rec serve" in err[0] and "--wait" in err[0]


def test_replay_equals_evaluate_on_rsc15(rsc15_paths, tmp_path):
    """The real RSC15 sample: a model trained for one epoch, exported, served and replayed."""
    from tf_gru4rec.config import load_preset
    from tf_gru4rec.data.io import read_events

    train_path, test_path = rsc15_paths
    events = read_events(train_path)
    vocabulary = ItemVocabulary.from_events(events["ItemId"].to_numpy())
    config = load_preset("quick").replace(n_epochs=1)
    model = train(config, SessionLog.from_events(events, vocabulary), verbose=0).model
    export_model(model, vocabulary, str(tmp_path / "gru4rec"), warmup=False)
    test_events = read_events(test_path)
    offline = evaluate(model, _offline_log(test_events, vocabulary))
    with DevServer(str(tmp_path / "gru4rec"), port=0) as srv:
        served = replay(srv.target, test_events)
    assert offline["test_events"] > 10_000
    assert _metrics(served) == _metrics(offline)


# ---------------------------------------------------------------------- new versions
def test_new_version_is_picked_up_and_starts_with_empty_state(server, client, model):
    first = client.click(["reload"], ids([10]))
    client.click(["reload"], ids([11]))
    export_model(model, ItemVocabulary(RAW_IDS), server.manager.base_path, k=K)
    deadline = time.time() + 30
    while client.status()[0]["version"] != 2 and time.time() < deadline:
        time.sleep(0.1)
    assert client.status()[0]["version"] == 2
    # The session's state stayed with version 1: the same click starts over.
    again = client.click(["reload"], ids([10]))
    np.testing.assert_array_equal(again["item_ids"], first["item_ids"])
