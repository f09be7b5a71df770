"""JSON files the pipeline writes (reports, manifests): atomic, and always valid JSON."""

from __future__ import annotations

import json
import math
import os
from typing import Any


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
    """Writes obj to path through a temporary file and a rename: readers never see half."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(json_safe(obj), f, indent=2, sort_keys=True, default=str, allow_nan=False)
    os.replace(tmp, path)


def read_json(path: str) -> Any:
    """Reads a JSON file."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)
