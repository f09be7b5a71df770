"""The TF Serving side of the predict contract, for the tests: how TF Serving decodes a REST
body (api_rest.md) and a gRPC PredictRequest into the tensors a signature receives. The
client's requests are checked against these; TF Serving's binary cannot run here."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from ecdctr.serving.client import B64
from ecdctr.serving.export import INPUT_KEY


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and B64 in value


def _decode_value(value: Any) -> Any:
    """JSON -> tensor element: {"b64": s} -> bytes, text -> UTF-8 bytes (DT_STRING), lists
    recursively, numbers and booleans as they are."""
    if _is_b64(value):
        text = value[B64]
        if not isinstance(text, str):
            raise ValueError(f"'{B64}' must hold a base64 string, got {type(text).__name__}")
        try:
            return base64.b64decode(text, validate=True)
        except binascii.Error as e:
            raise ValueError(f"'{B64}' value is not valid base64: {e}") from None
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, list):
        return [_decode_value(v) for v in value]
    if isinstance(value, dict):
        raise ValueError(f"unexpected object with keys {sorted(value)} where a tensor value was expected")
    return value


def _array(values: Any) -> np.ndarray:
    decoded = _decode_value(values)
    leaf = decoded
    while isinstance(leaf, list) and leaf:
        leaf = leaf[0]
    return np.array(decoded, dtype=object) if isinstance(leaf, bytes) else np.asarray(decoded)


def decode_rest_body(body: Mapping[str, Any] | str | bytes,
                     input_names: Sequence[str] = (INPUT_KEY,)) -> dict[str, np.ndarray]:
    """The tensors TF Serving feeds to a signature with `input_names` for a predict body, by
    the rules of api_rest.md: exactly one of "instances" (row) or "inputs" (columnar); with
    one named input, instances (or inputs) are the values themselves, otherwise each instance
    is an object {name: value} (inputs an object of name -> tensor); a single-key object
    {"b64": ...} is a binary value, not a named input. DT_STRING arrays come back as object
    arrays of bytes."""
    if isinstance(body, (str, bytes)):
        body = json.loads(body)
    if not isinstance(body, Mapping):
        raise ValueError("the request body must be a JSON object")
    if ("instances" in body) == ("inputs" in body):
        raise ValueError('the request must have exactly one of "instances" (row format) or '
                         '"inputs" (columnar format)')
    names = list(input_names)
    if "inputs" in body:
        inputs = body["inputs"]
        if isinstance(inputs, dict) and not _is_b64(inputs):
            missing = sorted(set(names) - set(inputs))
            extra = sorted(set(inputs) - set(names))
            if missing or extra:
                raise ValueError(f"inputs {sorted(inputs)} do not match the signature's {sorted(names)}")
            return {n: _array(inputs[n]) for n in names}
        if len(names) != 1:
            raise ValueError(f"the signature has {len(names)} inputs; name them in an object")
        return {names[0]: _array(inputs)}
    instances = body["instances"]
    if not isinstance(instances, list):
        raise ValueError('"instances" must be a list')
    named = [isinstance(i, dict) and not _is_b64(i) for i in instances]
    if instances and all(named):
        columns: dict[str, list[Any]] = {n: [] for n in names}
        for i, instance in enumerate(instances):
            if set(instance) != set(names):
                raise ValueError(f"instance {i} has inputs {sorted(instance)}, the signature "
                                 f"takes {sorted(names)}")
            for n in names:
                columns[n].append(instance[n])
        return {n: _array(v) for n, v in columns.items()}
    if any(named):
        raise ValueError('"instances" mixes named-input objects and bare values')
    if len(names) != 1:
        raise ValueError(f"the signature has {len(names)} inputs; each instance must be an object")
    return {names[0]: _array(instances)}


def decode_grpc_request(request: predict_pb2.PredictRequest) -> dict[str, np.ndarray]:
    """The tensors of a PredictRequest's inputs, as tf.make_ndarray reads them (DT_STRING ->
    object arrays of bytes)."""
    return {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
