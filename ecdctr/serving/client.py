"""TF Serving client for the exported A-CTR model: gRPC and REST predict requests on serialized Examples."""

from __future__ import annotations

import base64
import gzip
import json
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2

from ecdctr.data.rows import RowError, RowParser, features_example
from ecdctr.io.lines import LineReader
from ecdctr.serving.export import INPUT_KEY, OUTPUT_KEY

PROTOCOLS = ("grpc", "rest")
DEFAULT_SIGNATURE = "serving_default"
B64 = "b64"  # api_rest.md: binary DT_STRING values travel as {"b64": <base64>}
MAX_GRPC_MESSAGE = 64 * 1024 * 1024  # generous: a 1000-candidate batch is well under 1 MB


def grpc_request(model_name: str, examples: Sequence[bytes],
                 signature: str = DEFAULT_SIGNATURE) -> predict_pb2.PredictRequest:
    """A PredictionService.Predict request: input `examples` = DT_STRING [B] of serialized Examples."""
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
    request.inputs[INPUT_KEY].CopyFrom(
        tf.make_tensor_proto(list(examples), dtype=tf.string, shape=[len(examples)]))
    return request


def rest_body(examples: Sequence[bytes], signature: str = DEFAULT_SIGNATURE) -> dict[str, Any]:
    """The JSON body of POST /v1/models/<name>:predict in the row ("instances") format. The
    signature has one named input, so each instance is the value itself (api_rest.md), and
    serialized Examples are binary, so each value is {"b64": <standard base64>}."""
    return {"signature_name": signature,
            "instances": [{B64: base64.b64encode(e).decode("ascii")} for e in examples]}


def _batches(examples: Sequence[bytes], size: int) -> Iterator[Sequence[bytes]]:
    for start in range(0, len(examples), size):
        yield examples[start:start + size]


def _scores(values: np.ndarray | list, expected: int, where: str) -> list[float]:
    scores = np.asarray(values, dtype=np.float64).reshape(-1).tolist()
    if len(scores) != expected:
        raise RuntimeError(f"{where}: expected {expected} probabilities, got {len(scores)}")
    return scores


def _query_grpc(target: str, model_name: str, batches: Iterator[Sequence[bytes]], timeout: float,
                signature: str) -> list[float]:
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    where = f"TF Serving at {target} (grpc)"
    options = [("grpc.max_send_message_length", MAX_GRPC_MESSAGE),
               ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE)]
    scores: list[float] = []
    with grpc.insecure_channel(target, options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for batch in batches:
            try:
                response = stub.Predict(grpc_request(model_name, batch, signature), timeout=timeout)
            except grpc.RpcError as e:
                code = e.code() if isinstance(e, grpc.Call) else None
                details = e.details() if isinstance(e, grpc.Call) else str(e)
                raise RuntimeError(f"{where} failed: {code.name if code else 'UNKNOWN'}: {details}") from None
            if OUTPUT_KEY not in response.outputs:
                raise RuntimeError(f"{where}: the answer has no {OUTPUT_KEY!r} output "
                                   f"(outputs: {sorted(response.outputs)})")
            scores += _scores(tf.make_ndarray(response.outputs[OUTPUT_KEY]), len(batch), where)
    return scores


def _http_error_message(error: urllib.error.HTTPError) -> str:
    try:
        raw = error.read().decode("utf-8", "replace")
    except OSError:
        raw = ""
    try:
        message = json.loads(raw).get("error", raw)
    except (ValueError, AttributeError):
        message = raw
    return str(message).strip() or error.reason


def _query_rest(target: str, model_name: str, batches: Iterator[Sequence[bytes]], timeout: float,
                signature: str) -> list[float]:
    base = target.rstrip("/") if "://" in target else f"http://{target}"
    url = f"{base}/v1/models/{model_name}:predict"
    where = f"TF Serving at {target} (rest, {url})"
    scores: list[float] = []
    for batch in batches:
        data = json.dumps(rest_body(batch, signature)).encode("utf-8")
        request = urllib.request.Request(url, data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{where} answered HTTP {e.code}: {_http_error_message(e)}") from None
        except urllib.error.URLError as e:
            raise RuntimeError(f"{where} is unreachable: {e.reason}") from None
        except TimeoutError as e:
            raise RuntimeError(f"{where} did not answer within {timeout:g}s: {e}") from None
        except (ValueError, OSError) as e:
            raise RuntimeError(f"{where}: unreadable answer: {e}") from None
        if not isinstance(answer, dict) or "predictions" not in answer:
            error = answer.get("error") if isinstance(answer, dict) else None
            raise RuntimeError(f"{where}: {error or 'no predictions in the answer: ' + str(answer)[:200]}")
        predictions = answer["predictions"]
        if predictions and isinstance(predictions[0], dict):  # several outputs: one object per row
            predictions = [p[OUTPUT_KEY] for p in predictions]
        scores += _scores(predictions, len(batch), where)
    return scores


def query(target: str, model_name: str, examples: Sequence[bytes], protocol: str = "grpc",
          timeout: float = 10.0, batch_size: int = 256,
          signature: str = DEFAULT_SIGNATURE) -> list[float]:
    """Click probabilities of serialized Examples from TF Serving at target (HOST:PORT: the
    gRPC port for "grpc", the REST port for "rest"), one request per batch_size examples.
    Any failure raises RuntimeError naming the target, the protocol and the server's message."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r} is not one of {list(PROTOCOLS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not examples:
        return []
    call = _query_grpc if protocol == "grpc" else _query_rest
    return call(target, model_name, _batches(examples, batch_size), timeout, signature)


def read_examples(path: str, parser: RowParser) -> tuple[list[bytes | None], list[str]]:
    """Serialized Examples of a JSON Lines file of raw-log rows (.jsonl[.gz]), in order, with
    None for a row that cannot be used, and one "path:line: skipped: reason" message per such
    row; blank lines are skipped, as `ecdctr predict` does. A line longer than the spec's
    max_line_bytes is such a row, read in blocks and never held whole."""
    opener = gzip.open if path.endswith(".gz") else open
    rows: list[bytes | None] = []
    problems: list[str] = []
    with opener(path, "rb") as f:
        lines = LineReader(f, parser.spec.max_line_bytes)
        for n, raw in lines:
            try:
                if raw is None:
                    raise RowError("line_too_long", f"the line is longer than {lines.limit} bytes "
                                                    f"({lines.too_long_bytes} bytes)")
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise RowError("not_utf8", f"byte {e.start} is not UTF-8 ({raw[e.start:e.start + 1]!r})"
                                   ) from None
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise RowError("not_an_object",
                                   f"expected an object of columns, got {type(row).__name__}")
                values, _ = parser.parse_features(row)
                rows.append(features_example(values).SerializeToString())
            except (json.JSONDecodeError, RowError) as e:
                problems.append(f"{path}:{n}: skipped: {e}")
                rows.append(None)
    return rows, problems
