"""Helpers that turn YAML documents into validated values with errors that say what to fix."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml


class ConfigError(ValueError):
    """A spec or config file is invalid; the message names the file, the key and the fix."""


MAX_YAML_BYTES = 1 << 20  # a spec or run config is a few KB; a bigger file is a mistake
MAX_YAML_NODES = 100_000  # values after aliases are expanded: stops "billion laughs" files


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (a second `user_id:` would silently
    replace the first) and documents whose aliases expand past MAX_YAML_NODES values."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            at = (key_node.start_mark.line, key_node.start_mark.column)  # two keys may share a line
            try:
                first = seen.setdefault(key, at)
            except TypeError:
                continue  # an unhashable key: SafeLoader reports it
            if first != at:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {str(key)[:80]!r} (first on line {first[0] + 1}); "
                    f"the second would silently replace the first", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Values in node once every alias is expanded (aliases share nodes, so memoised)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a recursive alias counts once
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(n, memo) for n in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[id(node)] = min(size, MAX_YAML_NODES + 1)
    return memo[id(node)]


def load_yaml(path: str) -> Any:
    """Reads a YAML file, turning I/O, encoding and syntax problems, duplicate keys and
    oversized files into ConfigError (naming the file, the line and the fix)."""
    from ecdctr.io import storage  # TensorFlow's file layer, imported only when a file is read

    try:
        if storage.isdir(path):
            raise ConfigError(f"{path}: is a folder, not a YAML file. Fix: pass the file's path.")
        if not storage.exists(path):
            raise FileNotFoundError(path)
        data = storage.read_bytes(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found. Fix: pass the path of an existing file.") from None
    except (OSError, tf_errors()) as e:
        raise ConfigError(f"{path}: cannot be read ({e}). Fix: check the path and its "
                          f"permissions.") from None
    if len(data) > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: {len(data):,} bytes, more than a spec or config can be "
                          f"({MAX_YAML_BYTES:,}). Fix: pass the right file.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {e.start}: {data[e.start:e.start + 1]!r})."
                          f" Fix: pass the YAML file, saved as UTF-8.") from None
    try:
        loader = _StrictLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None and _expanded_size(node, {}) > MAX_YAML_NODES:
                raise ConfigError(f"{path}: its aliases expand to more than {MAX_YAML_NODES:,} "
                                  f"values. Fix: write the values out; a spec or config is small.")
            return loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{path}:{where} invalid YAML ({problem}). Fix: correct the "
                          f"file.") from None


def tf_errors() -> type[Exception]:
    """TensorFlow's file errors (gfile raises them for URIs)."""
    import tensorflow as tf

    return tf.errors.OpError


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
