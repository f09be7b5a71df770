"""Helpers that turn YAML documents into validated values with errors that say what to fix."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml


class ConfigError(ValueError):
    """A spec or config file is invalid; the message names the file, the key and the fix."""


def load_yaml(path: str) -> Any:
    """Reads a YAML file, turning I/O and syntax problems into ConfigError."""
    from ecdctr import storage  # TensorFlow's file layer, imported only when a file is read

    try:
        if not storage.exists(path):
            raise FileNotFoundError(path)
        return yaml.safe_load(storage.read_text(path))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found. Fix: pass the path of an existing file.") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}:{where}: invalid YAML ({e}). Fix: correct the syntax.") from None


def unknown_keys(mapping: dict, allowed: Iterable[str]) -> list[str]:
    """Returns the keys of mapping that are not allowed, sorted."""
    allowed = set(allowed)
    return sorted(str(k) for k in mapping if k not in allowed)


def is_int(value: Any) -> bool:
    """True for ints but not bools (YAML `yes` must not pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """True for ints and floats but not bools."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
