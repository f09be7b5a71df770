"""Tests for the feature spec loader and validator."""

import copy

import pytest
import yaml

from ecdctr.spec.feature_spec import load_spec, parse_spec
from ecdctr.spec.validation import ConfigError

DEFAULT = "features/default.yaml"


def _doc():
    with open(DEFAULT) as f:
        return yaml.safe_load(f)


def test_default_spec_loads_with_roles():
    spec = load_spec(DEFAULT)
    assert [f.name for f in spec.domain_features] == ["scenario", "position", "user_segment"]
    assert {f.name for f in spec.tpm_features} == {"user_id", "item_id", "category"}
    assert spec.entities["user"].name == "user_id"
    assert spec.feature("price_band").column == "price"
    assert spec.feature("brand").hash_buckets == 2000 and not spec.feature("brand").uses_vocab
    assert spec.columns[:3] == ("request_id", "ts", "click")


def test_fingerprint_is_stable_and_content_based(tmp_path):
    a = load_spec(DEFAULT)
    copied = tmp_path / "copy.yaml"
    copied.write_text(open(DEFAULT).read())
    assert load_spec(str(copied)).fingerprint == a.fingerprint
    doc = _doc()
    doc["features"]["gender"]["dim"] = 5
    changed = parse_spec(doc)
    assert changed.fingerprint != a.fingerprint
    assert changed.feature("user_id").fingerprint == a.feature("user_id").fingerprint
    assert changed.feature("gender").fingerprint != a.feature("gender").fingerprint


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d.update(lables="x"), "unknown top-level key 'lables'"),
    (lambda d: d["features"]["gender"].update(dimm=4), "feature 'gender': unknown key 'dimm'"),
    (lambda d: d["features"]["gender"].update(kind="text"), "feature 'gender': 'kind' is 'text'"),
    (lambda d: d["features"]["gender"].update(hash_buckets=10), "exactly one of"),
    (lambda d: d["features"]["gender"].pop("dim"), "feature 'gender': 'dim' must be a positive"),
    (lambda d: d["features"]["price"].update(dim=3), "'dim' applies to embedded features"),
    (lambda d: d["features"]["price"].update(normalize="minmax"), "'normalize' is 'minmax'"),
    (lambda d: d["features"]["price_band"].update(boundaries=[5, 3]), "increasing numbers"),
    (lambda d: d["features"]["price"].update(domain=True), "does not apply to numeric"),
    (lambda d: d["features"]["item_id"].update(entity="user"), "both have entity 'user'"),
    (lambda d: d["features"]["gender"].update(entity="shop"), "'entity' is 'shop'"),
    (lambda d: d["features"]["user_id"].update(tpm=False), "need `tpm: true`"),
    (lambda d: d.update(group_by="nope"), "group_by 'nope'"),
    (lambda d: d["features"]["gender"].update(vocab={"min_count": 0}), "vocab.min_count"),
    (lambda d: d["features"]["gender"].update(vocab={"minimum": 1}), "unknown vocab key 'minimum'"),
    (lambda d: d["features"]["gender"].update(column="click"), "is the label, timestamp"),
    (lambda d: d["features"]["gender"].update(tpm="yes please"), "'tpm' must be true or false"),
    (lambda d: d["features"]["hist_categories"].update(default=["x"]), "has no 'default'"),
    (lambda d: d["features"].update({"evil\n": {"kind": "categorical", "hash_buckets": 9, "dim": 2}}),
     "feature 'evil\\n': names must be identifiers"),
    (lambda d: d["features"].update({"x" * 5000: {"kind": "categorical", "hash_buckets": 9, "dim": 2}}),
     "feature 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'...: names must be"),
])
def test_errors_name_the_feature_and_the_fix(mutate, expected):
    doc = copy.deepcopy(_doc())
    mutate(doc)
    with pytest.raises(ConfigError) as e:
        parse_spec(doc, "my.yaml")
    assert expected in str(e.value)
    assert str(e.value).startswith("my.yaml: invalid feature spec")


def test_all_errors_are_reported_together():
    doc = _doc()
    doc["features"]["gender"]["kind"] = "text"
    doc["features"]["city_tier"]["dimm"] = 1
    with pytest.raises(ConfigError) as e:
        parse_spec(doc, "my.yaml")
    assert "'gender'" in str(e.value) and "'city_tier'" in str(e.value)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("label: click\nfeatures:\n  a: {kind: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+"):
        load_spec(str(bad))


def test_missing_file():
    with pytest.raises(ConfigError, match="file not found"):
        load_spec("no/such/spec.yaml")
