"""JSON files the pipeline writes (reports, manifests): atomic, and always valid JSON."""

from __future__ import annotations

import json
import math
from typing import Any

from ecdctr.io import storage


def json_safe(obj: Any) -> Any:
    """NaN and inf (e.g. a GAUC with no user having both classes) become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return json_safe(obj.item())
    return obj


def write_json(path: str, obj: Any) -> None:
    """Writes obj to path (local or a URI) so that readers never see half (storage.write_text)."""
    storage.write_text(path, json.dumps(json_safe(obj), indent=2, sort_keys=True, default=str,
                                        allow_nan=False))


def read_json(path: str) -> Any:
    """Reads a JSON file."""
    return json.loads(storage.read_text(path))


class DamagedFile(ValueError):
    """A file the pipeline wrote cannot be trusted: the message names it and what is wrong."""


def read_json_object(path: str) -> dict:
    """Reads a JSON file the pipeline wrote (a report, a model folder's meta.json, a marker)
    and checks it is a JSON object; DamagedFile, naming the path, when it is empty, truncated,
    not JSON or another JSON value."""
    return json_object(storage.read_text(path), path)


def json_object(text: str | bytes, path: str) -> dict:
    """The JSON object in text, read from path (see read_json_object)."""
    try:
        body = json.loads(text)
    except ValueError as e:
        raise DamagedFile(f"{path}: damaged ({'empty' if not text.strip() else f'not JSON: {e}'})"
                          ) from None
    if not isinstance(body, dict):
        raise DamagedFile(f"{path}: damaged (a JSON {type(body).__name__}, not an object)")
    return body
