"""Tests for the TF Serving client (ecdctr/serving/client.py, `ecdctr query`) and the serving configs.

TF Serving's binary cannot be installed here, so the end-to-end tests run TEST STAND-INS for
it on 127.0.0.1: an in-process gRPC PredictionService and an http.server implementing
POST /v1/models/<name>:predict, both decoding requests by TF Serving's documented rules
(tf.make_ndarray for gRPC, api_rest.md's row format and {"b64": ...} for REST) and running
the real exported SavedModel's signature. The configs in serving/ are parsed with TF
Serving's own protobuf messages.
"""

import base64
import http.server
import importlib
import json
import re
import socket
import threading
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from conftest import feature_batch
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from serving_decoders import decode_grpc_request, decode_rest_body
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from ecdctr.cli.main import main
from ecdctr.data.rows import RowParser, features_example
from ecdctr.models.ctr_model import ModelConfig, build_model
from ecdctr.serving.client import grpc_request, query, rest_body
from ecdctr.serving.export import INPUT_KEY, OUTPUT_KEY, export_saved_model
from ecdctr.spec.feature_spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
SPEC_PATH = ROOT / "features" / "default.yaml"
SERVING = ROOT / "serving"
SPEC = load_spec(str(SPEC_PATH))
MODEL = "actr"
TIMEOUT = 10.0


def _batch(n=16):
    return feature_batch(SPEC, n)


def _rows(n=23):
    """Raw-log rows: known and unseen ids, missing features, lists, a price per row."""
    rows = []
    for i in range(n):
        row = {"user_id": f"v{i % 7}", "item_id": f"v{(i * 3) % 6}", "scenario": f"v{i % 2}",
               "position": f"v{i % 4}", "brand": f"b{i}", "price": 1.5 * i + 0.25,
               "hist_categories": [f"v{j}" for j in range(i % 4)], "ignored_column": i}
        if i % 5 == 0:
            del row["price"]
        rows.append(row)
    return rows


def _examples(rows):
    parser = RowParser(SPEC)
    return [features_example(parser.parse_features(r)[0]).SerializeToString() for r in rows]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A real exported A-CTR SavedModel, its serving_default signature and test examples."""
    vocabs = {f.name: [f"v{i}" for i in range(5)] for f in SPEC.features if f.uses_vocab}
    model = build_model(SPEC.features, vocabs, {}, ModelConfig(hidden=(8, 4), batch_size=16),
                        _batch(), None)
    examples = _examples(_rows())
    base = tmp_path_factory.mktemp("export") / MODEL
    path = export_saved_model(model, SPEC, str(base), timing_examples=examples[:4])
    signature = tf.saved_model.load(path).signatures["serving_default"]
    direct = signature(**{INPUT_KEY: tf.constant(examples)})[OUTPUT_KEY].numpy()
    return signature, examples, direct


def _run(signature, inputs):
    """What TF Serving does with decoded inputs: feed them to the signature."""
    return {k: v.numpy() for k, v in signature(**{k: tf.constant(v) for k, v in inputs.items()}).items()}


def _input_names(signature):
    return sorted(signature.structured_input_signature[1])


# --- request contracts -----------------------------------------------------------------------

def test_rest_body_is_the_row_format_and_decodes_to_the_examples(served):
    signature, examples, direct = served
    assert len(set(direct.tolist())) > 1  # rows differ, so a reordering would show
    body = rest_body(examples)
    assert body["signature_name"] == "serving_default"
    assert body["instances"][0] == {"b64": base64.b64encode(examples[0]).decode()}
    wire = json.dumps(body)  # what goes over HTTP
    inputs = decode_rest_body(json.loads(wire), input_names=_input_names(signature))
    assert list(inputs) == [INPUT_KEY]
    assert inputs[INPUT_KEY].shape == (len(examples),)
    assert inputs[INPUT_KEY].tolist() == examples  # bytes for bytes
    np.testing.assert_array_equal(_run(signature, inputs)[OUTPUT_KEY], direct)


def test_rest_decoder_follows_api_rest_rules():
    b = base64.b64encode(b"\x00\xff").decode()
    assert decode_rest_body({"instances": [{"b64": b}, "text"]})[INPUT_KEY].tolist() == [b"\x00\xff", b"text"]
    named = decode_rest_body({"instances": [{"a": 1.0, "s": {"b64": b}}, {"a": 2.0, "s": "x"}]},
                             input_names=["a", "s"])
    assert named["a"].tolist() == [1.0, 2.0] and named["s"].tolist() == [b"\x00\xff", b"x"]
    assert decode_rest_body({"inputs": [{"b64": b}]})[INPUT_KEY].tolist() == [b"\x00\xff"]
    assert decode_rest_body({"inputs": {INPUT_KEY: ["x"]}})[INPUT_KEY].tolist() == [b"x"]
    with pytest.raises(ValueError, match="exactly one"):
        decode_rest_body({"instances": [], "inputs": []})
    with pytest.raises(ValueError, match="base64"):
        decode_rest_body({"instances": [{"b64": "not base64!"}]})
    with pytest.raises(ValueError, match="inputs"):
        decode_rest_body({"instances": [{"a": 1.0}]}, input_names=["a", "s"])


def test_grpc_request_tensor_is_the_examples(served):
    signature, examples, direct = served
    request = grpc_request(MODEL, examples)
    assert request.model_spec.name == MODEL
    assert request.model_spec.signature_name == "serving_default"
    proto = request.inputs[INPUT_KEY]
    assert proto.dtype == tf.string.as_datatype_enum
    assert [d.size for d in proto.tensor_shape.dim] == [len(examples)]
    wire = predict_pb2.PredictRequest.FromString(request.SerializeToString())
    inputs = decode_grpc_request(wire)
    assert tf.make_ndarray(wire.inputs[INPUT_KEY]).tolist() == examples
    assert inputs[INPUT_KEY].tolist() == examples
    np.testing.assert_array_equal(_run(signature, inputs)[OUTPUT_KEY], direct)


# --- stand-in servers on 127.0.0.1 ----------------------------------------------------------

class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """TEST STAND-IN for TF Serving's gRPC PredictionService.Predict."""

    def __init__(self, signature):
        self.signature = signature

    def Predict(self, request, context):  # noqa: N802 (gRPC method name)
        if request.model_spec.name != MODEL:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"Servable not found for request: Latest({request.model_spec.name})")
        if request.model_spec.signature_name not in ("", "serving_default"):
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"Serving signature name: \"{request.model_spec.signature_name}\" not found")
        outputs = _run(self.signature, decode_grpc_request(request))
        response = predict_pb2.PredictResponse()
        response.model_spec.CopyFrom(request.model_spec)
        for name, value in outputs.items():
            response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
        return response


def _rest_handler(signature):
    route = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?:predict$")

    class Handler(http.server.BaseHTTPRequestHandler):
        """TEST STAND-IN for TF Serving's REST predict API (api_rest.md)."""

        def _answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):  # noqa: N802 (http.server method name)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            match = route.match(self.path)
            if not match:
                return self._answer(404, {"error": f"Malformed request: POST {self.path}"})
            if match.group(1) != MODEL:
                return self._answer(404, {"error": f"Servable not found for request: "
                                                   f"Latest({match.group(1)})"})
            try:
                request = json.loads(body)
                inputs = decode_rest_body(request, input_names=_input_names(signature))
            except ValueError as e:
                return self._answer(400, {"error": str(e)})
            outputs = _run(signature, inputs)
            # Row format, one output: "predictions" is the list of values (api_rest.md).
            if len(outputs) == 1:
                predictions = next(iter(outputs.values())).tolist()
            else:
                predictions = [dict(zip(outputs, row, strict=True))
                               for row in zip(*(v.tolist() for v in outputs.values()), strict=True)]
            return self._answer(200, {"predictions": predictions})

        def log_message(self, *args):
            pass

    return Handler


@pytest.fixture(scope="module")
def servers(served):
    signature = served[0]
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        _PredictionService(signature), grpc_server)
    grpc_port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    http_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _rest_handler(signature))
    http_server.timeout = TIMEOUT
    thread = threading.Thread(target=http_server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield {"grpc": f"127.0.0.1:{grpc_port}", "rest": f"127.0.0.1:{http_server.server_address[1]}"}
    finally:
        http_server.shutdown()
        http_server.server_close()
        thread.join(TIMEOUT)
        grpc_server.stop(grace=None).wait(TIMEOUT)


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_query_returns_the_signature_probabilities(served, servers, protocol):
    _, examples, direct = served
    probs = query(servers[protocol], MODEL, examples, protocol=protocol, timeout=TIMEOUT,
                  batch_size=10)  # 23 examples: batches of 10, 10, 3
    assert len(probs) == len(examples)
    np.testing.assert_allclose(probs, direct, rtol=0, atol=1e-6)
    assert query(servers[protocol], MODEL, [], protocol=protocol) == []


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_server_errors_name_target_protocol_and_message(servers, protocol):
    with pytest.raises(RuntimeError) as e:
        query(servers[protocol], "nope", [b""], protocol=protocol, timeout=TIMEOUT)
    message = str(e.value)
    assert servers[protocol] in message and f"({protocol}" in message
    assert "Servable not found for request: Latest(nope)" in message


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_closed_port_gives_a_clear_error(protocol):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    target = f"127.0.0.1:{port}"  # nothing listens there any more
    with pytest.raises(RuntimeError) as e:
        query(target, MODEL, [b""], protocol=protocol, timeout=3.0)
    message = str(e.value)
    assert target in message and f"({protocol}" in message
    assert ("UNAVAILABLE" if protocol == "grpc" else "unreachable") in message


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_query_command_prints_one_probability_per_row(served, servers, protocol, tmp_path, capsys):
    _, _, direct = served
    rows = _rows()
    lines = [json.dumps(r) for r in rows[:3]] + ['{"price": "cheap"}', "not json", "",
                                                 json.dumps(rows[3])]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit) as e:
        main(["query", f"--target={servers[protocol]}", f"--model={MODEL}", f"--input={path}",
              f"--protocol={protocol}", f"--spec={SPEC_PATH}", "--batch_size=2"])
    assert e.value.code == 1
    out, err = capsys.readouterr()
    printed = out.split()
    assert printed[3:5] == ["nan", "nan"] and len(printed) == 6
    expected = [*direct[:3], direct[3]]
    np.testing.assert_allclose([float(p) for i, p in enumerate(printed) if i not in (3, 4)],
                               expected, atol=1e-6)
    assert f"{path}:4: skipped" in err and f"{path}:5: skipped" in err


def test_query_command_reports_an_unreachable_server(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(_rows(1)[0]) + "\n")
    with pytest.raises(SystemExit) as e:
        main(["query", f"--target=127.0.0.1:{port}", "--model=actr", f"--input={path}",
              f"--spec={SPEC_PATH}", "--timeout=3"])
    assert e.value.code == 2
    assert f"ecdctr query: error: TF Serving at 127.0.0.1:{port} (grpc)" in capsys.readouterr().err


# --- serving/ configs, parsed with TF Serving's messages ------------------------------------

def _upstream(name):
    """TF Serving's message `name` from tensorflow_serving 2.17's .proto files. The
    tensorflow-serving-api wheel ships model_server_config_pb2 but not monitoring_config_pb2
    or session_bundle_config_pb2; when those are missing, the messages are rebuilt here with
    the same names, field numbers and types as upstream (config/monitoring_config.proto,
    servables/tensorflow/session_bundle_config.proto), so text_format still rejects typos."""
    modules = {"BatchingParameters": "tensorflow_serving.servables.tensorflow.session_bundle_config_pb2",
               "MonitoringConfig": "tensorflow_serving.config.monitoring_config_pb2"}
    try:
        return getattr(importlib.import_module(modules[name]), name)
    except ImportError:
        pass
    fd = descriptor_pb2.FieldDescriptorProto
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(
        name="ecdctr_test/tf_serving_configs.proto", package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"])
    batching = file.message_type.add(name="BatchingParameters")
    for number, field in enumerate(("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                                    "num_batch_threads"), start=1):
        batching.field.add(name=field, number=number, label=fd.LABEL_OPTIONAL, type=fd.TYPE_MESSAGE,
                           type_name=".google.protobuf.Int64Value")
    batching.field.add(name="thread_pool_name", number=5, label=fd.LABEL_OPTIONAL,
                       type=fd.TYPE_MESSAGE, type_name=".google.protobuf.StringValue")
    batching.field.add(name="allowed_batch_sizes", number=6, label=fd.LABEL_REPEATED, type=fd.TYPE_INT64)
    batching.field.add(name="pad_variable_length_inputs", number=7, label=fd.LABEL_OPTIONAL,
                       type=fd.TYPE_BOOL)
    prometheus = file.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, label=fd.LABEL_OPTIONAL, type=fd.TYPE_BOOL)
    prometheus.field.add(name="path", number=2, label=fd.LABEL_OPTIONAL, type=fd.TYPE_STRING)
    monitoring = file.message_type.add(name="MonitoringConfig")
    monitoring.field.add(name="prometheus_config", number=1, label=fd.LABEL_OPTIONAL,
                         type=fd.TYPE_MESSAGE, type_name=".tensorflow.serving.PrometheusConfig")
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))


def _parse(filename, message_class):
    return text_format.Parse((SERVING / filename).read_text(), message_class())


def test_models_config_parses_as_model_server_config():
    config = _parse("models.config", model_server_config_pb2.ModelServerConfig)
    [model] = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == (MODEL, "/models/actr", "tensorflow")
    assert model.model_version_policy.WhichOneof("policy_choice") == "latest"
    assert model.model_version_policy.latest.num_versions == 2


def test_batching_config_parses_and_is_consistent():
    params = _parse("batching.config", _upstream("BatchingParameters"))
    for field in ("max_batch_size", "batch_timeout_micros", "num_batch_threads", "max_enqueued_batches"):
        assert params.HasField(field), field
    sizes = list(params.allowed_batch_sizes)
    assert sizes == sorted(set(sizes)) and sizes[-1] == params.max_batch_size.value
    assert params.max_batch_size.value >= 1000  # a whole ranking request of ~1000 candidates
    assert params.max_batch_size.value >= 256  # query()'s default batch_size
    assert 0 < params.batch_timeout_micros.value <= 10_000
    assert params.max_enqueued_batches.value >= params.num_batch_threads.value >= 1


def test_monitoring_config_parses():
    config = _parse("monitoring.config", _upstream("MonitoringConfig"))
    assert config.prometheus_config.enable
    assert config.prometheus_config.path == "/monitoring/prometheus/metrics"


def test_upstream_messages_reject_typos():
    with pytest.raises(text_format.ParseError):
        text_format.Parse("max_batch_size { value: 1 }\nbatch_timeout_micro { value: 1 }",
                          _upstream("BatchingParameters")())
    with pytest.raises(text_format.ParseError):
        text_format.Parse("prometheus_config { enabled: true }", _upstream("MonitoringConfig")())


def test_dockerfile_starts_the_server_with_the_copied_configs():
    dockerfile = (SERVING / "Dockerfile").read_text()
    assert re.search(r"^FROM tensorflow/serving:2\.17\.1$", dockerfile, re.M)
    copy = re.search(r"^COPY (.+) (\S+)/$", dockerfile, re.M)
    files, folder = copy.group(1).split(), copy.group(2)
    assert sorted(files) == ["batching.config", "models.config", "monitoring.config"]
    for flag, name in (("model_config_file", "models.config"),
                       ("batching_parameters_file", "batching.config"),
                       ("monitoring_config_file", "monitoring.config")):
        assert f'"--{flag}={folder}/{name}"' in dockerfile
    for flag in ("--port=8500", "--rest_api_port=8501", "--enable_batching", "--enable_model_warmup=true"):
        assert f'"{flag}"' in dockerfile
