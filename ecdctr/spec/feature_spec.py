"""The feature spec: loads and validates the YAML that feature engineers edit.

Every other module receives a validated `Spec`; this is the only place that parses it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from ecdctr.io.lines import DEFAULT_MAX_LINE_BYTES
from ecdctr.spec.validation import ConfigError, is_int, is_number, load_yaml, unknown_keys

KINDS = ("categorical", "numeric", "categorical_list")
NORMALIZERS = ("zscore", "log", "none")
ENTITIES = ("user", "item")
TOP_KEYS = ("label", "timestamp", "request_id", "group_by", "max_line_bytes", "features")
FEATURE_KEYS = (
    "column", "kind", "vocab", "hash_buckets", "dim", "default",
    "domain", "tpm", "entity", "normalize", "boundaries",
)
VOCAB_KEYS = ("min_count", "max_size")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # fullmatch: `$` would let a final "\n" in
MIN_LINE_BYTES, MAX_LINE_BYTES = 1024, 1 << 30  # the range max_line_bytes may take
MAX_NAME = 64  # feature names become file names (counts/<day>/<name>.tsv) and Keras layer names


@dataclass(frozen=True)
class Feature:
    """One validated feature of the spec."""

    name: str
    column: str
    kind: str
    dim: int = 0
    default: Any = None
    vocab_min_count: int = 0
    vocab_max_size: int = 0
    hash_buckets: int = 0
    domain: bool = False
    tpm: bool = False
    entity: str | None = None
    normalize: str = "none"
    boundaries: tuple[float, ...] = ()

    @property
    def uses_vocab(self) -> bool:
        """True when ids come from a vocabulary built from the data."""
        return self.kind != "numeric" and self.hash_buckets == 0

    @property
    def embedded(self) -> bool:
        """True when the feature enters the model through an embedding table."""
        return self.kind != "numeric" or bool(self.boundaries)

    @property
    def fingerprint(self) -> str:
        """Hash of everything that shapes this feature's variables and inputs."""
        return _digest(asdict(self))


@dataclass(frozen=True)
class Spec:
    """A validated feature spec."""

    path: str
    label: str
    timestamp: str
    request_id: str
    group_by: str
    features: tuple[Feature, ...] = field(default_factory=tuple)
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES  # longer raw-log lines are quarantined unread

    def feature(self, name: str) -> Feature:
        """The feature called name; KeyError names the known ones."""
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"no feature {name!r} in {self.path}; known: {[f.name for f in self.features]}")

    @property
    def domain_features(self) -> tuple[Feature, ...]:
        """Domain-aware features: their combination is the domain id."""
        return tuple(f for f in self.features if f.domain)

    @property
    def tpm_features(self) -> tuple[Feature, ...]:
        """The few basic features the tiny pre-training model (TPM) uses."""
        return tuple(f for f in self.features if f.tpm)

    @property
    def entities(self) -> dict[str, Feature]:
        """Entity name (user/item) -> the feature whose values key TPM embeddings."""
        return {f.entity: f for f in self.features if f.entity}

    @property
    def columns(self) -> tuple[str, ...]:
        """Every raw-log column the spec reads, in a stable order."""
        cols = [self.request_id, self.timestamp, self.label]
        for f in self.features:
            if f.column not in cols:
                cols.append(f.column)
        return tuple(cols)

    @property
    def fingerprint(self) -> str:
        """Hash of the spec's content (not its path, nor the reading bound max_line_bytes,
        which shapes no model); checkpoints record it."""
        body = {k: v for k, v in asdict(self).items() if k not in ("path", "max_line_bytes")}
        return _digest(body)


def feature_fingerprints(spec: Spec) -> dict[str, str]:
    """{feature name: fingerprint} of a spec, as checkpoints record it."""
    return {f.name: f.fingerprint for f in spec.features}


def feature_diff(old: dict[str, str], new: dict[str, str]) -> dict[str, list[str]]:
    """Compares two {feature: fingerprint} maps: features new in `new`, changed (fingerprint
    differs), removed (only in `old`) and restored (same fingerprint: their weights carry over)."""
    return {"new": sorted(set(new) - set(old)),
            "changed": sorted(n for n in set(new) & set(old) if new[n] != old[n]),
            "removed": sorted(set(old) - set(new)),
            "restored": sorted(n for n in set(new) & set(old) if new[n] == old[n])}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_spec(path: str) -> Spec:
    """Loads and validates a feature spec; raises ConfigError listing every problem found."""
    return parse_spec(load_yaml(path), path)


def parse_spec(doc: Any, path: str = "<spec>") -> Spec:
    """Validates a parsed YAML document as a feature spec."""
    errors: list[str] = []
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: the spec must be a mapping with 'label', 'timestamp' and "
                          f"'features'. Fix: see features/default.yaml for the layout.")
    for key in unknown_keys(doc, TOP_KEYS):
        errors.append(f"unknown top-level key {key!r}. Fix: remove it or use one of {list(TOP_KEYS)}.")
    top = {}
    for key, default in (("label", None), ("timestamp", None), ("request_id", "request_id"),
                         ("group_by", "user_id")):
        value = doc.get(key, default)
        if not isinstance(value, str) or not value:
            errors.append(f"'{key}' must name a column (a non-empty string). "
                          f"Fix: e.g. `{key}: {default or key}`.")
        top[key] = value
    max_line_bytes = doc.get("max_line_bytes", DEFAULT_MAX_LINE_BYTES)
    if (not isinstance(max_line_bytes, int) or isinstance(max_line_bytes, bool)
            or not MIN_LINE_BYTES <= max_line_bytes <= MAX_LINE_BYTES):
        errors.append(f"'max_line_bytes' is {max_line_bytes!r}: it must be a whole number of bytes "
                      f"from {MIN_LINE_BYTES} to {MAX_LINE_BYTES}. Fix: e.g. `max_line_bytes: "
                      f"{DEFAULT_MAX_LINE_BYTES}` (the default, 1 MiB).")
    raw_features = doc.get("features")
    features: list[Feature] = []
    if not isinstance(raw_features, dict) or not raw_features:
        errors.append("'features' must be a non-empty mapping of feature name -> settings. "
                      "Fix: add at least one feature.")
    else:
        for name, body in raw_features.items():
            feature = _parse_feature(str(name), body, errors)
            if feature is not None:
                features.append(feature)
    _check_cross_feature(top, features, errors)
    if errors:
        raise ConfigError(f"{path}: invalid feature spec:\n  - " + "\n  - ".join(errors))
    return Spec(path=path, features=tuple(features), max_line_bytes=max_line_bytes, **top)


def _parse_feature(name: str, body: Any, errors: list[str]) -> Feature | None:
    where = f"feature {name[:MAX_NAME]!r}" + ("..." if len(name) > MAX_NAME else "")
    if not _NAME.fullmatch(name) or len(name) > MAX_NAME:
        errors.append(f"{where}: names must be identifiers (letters, digits, _) of at most "
                      f"{MAX_NAME} characters. Fix: rename it.")
        return None
    if not isinstance(body, dict):
        errors.append(f"{where}: settings must be a mapping. Fix: e.g. `{name}: {{kind: categorical, "
                      f"hash_buckets: 1000, dim: 8}}`.")
        return None
    n_errors = len(errors)
    for key in unknown_keys(body, FEATURE_KEYS):
        errors.append(f"{where}: unknown key {key!r}. Fix: remove it or use one of {list(FEATURE_KEYS)}.")
    kind = body.get("kind")
    if kind not in KINDS:
        errors.append(f"{where}: 'kind' is {kind!r}. Fix: set kind to one of {list(KINDS)}.")
        return None
    column = body.get("column", name)
    if not isinstance(column, str) or not column:
        errors.append(f"{where}: 'column' must be a non-empty string. Fix: name the raw-log column.")
    flags = {}
    for flag in ("domain", "tpm"):
        flags[flag] = body.get(flag, False)
        if not isinstance(flags[flag], bool):
            errors.append(f"{where}: '{flag}' must be true or false, got {flags[flag]!r}.")
    entity = body.get("entity")
    if entity is not None and entity not in ENTITIES:
        errors.append(f"{where}: 'entity' is {entity!r}. Fix: use one of {list(ENTITIES)} or drop it.")
    values: dict[str, Any] = {}
    if kind == "numeric":
        _parse_numeric(where, body, values, errors)
        if flags["domain"] or entity:
            errors.append(f"{where}: numeric features cannot be 'domain' or 'entity'. "
                          f"Fix: make it categorical or remove the role.")
    else:
        _parse_categorical(where, kind, body, values, errors)
    if entity and kind != "categorical":
        errors.append(f"{where}: 'entity' needs kind categorical (one id per row).")
    if entity and not flags["tpm"]:
        errors.append(f"{where}: entity features key the TPM embeddings, so they need `tpm: true`.")
    if len(errors) > n_errors:
        return None
    return Feature(name=name, column=column, kind=kind, entity=entity, **flags, **values)


def _positive_int(where: str, key: str, value: Any, errors: list[str]) -> int:
    if not is_int(value) or value < 1:
        errors.append(f"{where}: '{key}' must be a positive integer, got {value!r}.")
        return 0
    return value


def _parse_categorical(where: str, kind: str, body: dict, values: dict, errors: list[str]) -> None:
    for key in ("normalize", "boundaries"):
        if key in body:
            errors.append(f"{where}: '{key}' applies to numeric features only. Fix: remove it.")
    vocab, buckets = body.get("vocab"), body.get("hash_buckets")
    if (vocab is None) == (buckets is None):
        errors.append(f"{where}: give exactly one of 'vocab: {{min_count, max_size}}' or "
                      f"'hash_buckets: N'.")
    elif buckets is not None:
        values["hash_buckets"] = _positive_int(where, "hash_buckets", buckets, errors)
    elif not isinstance(vocab, dict):
        errors.append(f"{where}: 'vocab' must be a mapping like {{min_count: 1, max_size: 10000}}.")
    else:
        for key in unknown_keys(vocab, VOCAB_KEYS):
            errors.append(f"{where}: unknown vocab key {key!r}. Fix: use {list(VOCAB_KEYS)}.")
        values["vocab_min_count"] = _positive_int(where, "vocab.min_count",
                                                  vocab.get("min_count", 1), errors)
        values["vocab_max_size"] = _positive_int(where, "vocab.max_size",
                                                 vocab.get("max_size", 100_000), errors)
    values["dim"] = _positive_int(where, "dim", body.get("dim"), errors)
    default = body.get("default", "")
    if kind == "categorical_list":
        if "default" in body:
            errors.append(f"{where}: a categorical_list has no 'default' (a missing list is "
                          f"empty). Fix: remove it.")
        default = None
    elif not isinstance(default, (str, int)) or isinstance(default, bool):
        errors.append(f"{where}: 'default' must be an id (string), got {default!r}.")
    else:
        default = str(default)
    values["default"] = default


def _parse_numeric(where: str, body: dict, values: dict, errors: list[str]) -> None:
    for key in ("vocab", "hash_buckets", "domain", "tpm"):
        if body.get(key):
            errors.append(f"{where}: '{key}' does not apply to numeric features. Fix: remove it.")
    default = body.get("default", 0.0)
    if not is_number(default):
        errors.append(f"{where}: 'default' must be a number, got {default!r}.")
    values["default"] = float(default) if is_number(default) else 0.0
    if "boundaries" in body:
        if "normalize" in body:
            errors.append(f"{where}: give either 'normalize' or 'boundaries', not both.")
        bounds = body["boundaries"]
        if (not isinstance(bounds, list) or not bounds or not all(map(is_number, bounds))
                or any(a >= b for a, b in zip(bounds, bounds[1:], strict=False))):
            errors.append(f"{where}: 'boundaries' must be a non-empty list of increasing numbers.")
        else:
            values["boundaries"] = tuple(float(b) for b in bounds)
        values["dim"] = _positive_int(where, "dim", body.get("dim"), errors)
        return
    if "dim" in body:
        errors.append(f"{where}: 'dim' applies to embedded features; a normalized numeric "
                      f"enters the MLP as one value. Fix: remove 'dim' or add 'boundaries'.")
    normalize = body.get("normalize", "none")
    if normalize not in NORMALIZERS:
        errors.append(f"{where}: 'normalize' is {normalize!r}. Fix: use one of {list(NORMALIZERS)}.")
    values["normalize"] = normalize


def _check_cross_feature(top: dict, features: list[Feature], errors: list[str]) -> None:
    by_name = {f.name: f for f in features}
    reserved = {top["label"], top["timestamp"], top["request_id"]}
    for f in features:
        if f.column in reserved:
            errors.append(f"feature {f.name!r}: column {f.column!r} is the label, timestamp or "
                          f"request id column. Fix: point it at a feature column.")
    kinds: dict[str, Feature] = {}
    for f in features:
        other = kinds.setdefault(f.column, f)
        if (other.kind == "numeric") != (f.kind == "numeric"):
            errors.append(f"features {other.name!r} and {f.name!r} read column {f.column!r} as "
                          f"different types. Fix: give one of them another column.")
    seen: dict[str, str] = {}
    for f in features:
        if f.entity in seen:
            errors.append(f"features {seen[f.entity]!r} and {f.name!r} both have entity "
                          f"{f.entity!r}. Fix: keep one.")
        elif f.entity:
            seen[f.entity] = f.name
    group = by_name.get(top["group_by"]) if isinstance(top["group_by"], str) else None
    if features and (group is None or group.kind != "categorical"):
        errors.append(f"group_by {top['group_by']!r} must name a categorical feature "
                      f"(the GAUC grouping key). Fix: e.g. `group_by: user_id`.")
    if features and not any(f.tpm for f in features):
        errors.append("no feature has `tpm: true`; the tiny pre-training model needs a few. "
                      "Fix: mark the basic id features with `tpm: true`.")
