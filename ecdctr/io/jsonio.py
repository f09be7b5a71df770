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
