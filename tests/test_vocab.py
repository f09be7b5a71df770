"""Vocabularies survive any id: Unicode line separators round-trip through the build, the
vocabulary files and the model's lookups, an id spelled "[UNK]" shifts no row and the empty id
(which no vocabulary file line can hold) is out-of-vocabulary."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import tensorflow as tf

from ecdctr.data.datasets import example_batch
from ecdctr.data.vocab import OOV_TOKEN, build_vocabularies, read_vocabularies, write_vocabularies
from ecdctr.models.ctr_model import ModelConfig, build_model
from ecdctr.spec.feature_spec import load_spec
from pipelines.build import build

SPEC = load_spec("features/default.yaml")
DAY = dt.date(2024, 3, 1)
# every character str.splitlines() splits at, besides "\n" and "\r"
SEPARATORS = ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


def _row(i: int, age_level: str) -> dict:
    ts = int(dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC).timestamp())
    return {"request_id": f"r{i}", "ts": ts, "click": i % 2, "user_id": f"u{i}", "item_id": "i1",
            "gender": "f", "age_level": age_level, "city_tier": "1", "scenario": "feed",
            "position": "1", "user_segment": "new", "category": "c1", "brand": "b1",
            "price": 9.5, "hist_categories": ["c1", ""]}


def test_ids_with_unicode_line_separators_round_trip(tmp_path):
    levels = [f"f{sep}x" for sep in SEPARATORS] + ["f", "x"] * 3 + [OOV_TOKEN] * 9
    folder = tmp_path / "logs" / "natural" / f"date={DAY}"
    folder.mkdir(parents=True)
    (folder / "a.jsonl").write_text(
        "".join(json.dumps(_row(i, g)) + "\n" for i, g in enumerate(levels)), encoding="utf-8")
    build(SPEC, str(tmp_path / "logs"), str(tmp_path / "work"))
    vocabs = build_vocabularies(SPEC, str(tmp_path / "work"), [("natural", DAY)])
    expected = ["f", "x"] + sorted(f"f{sep}x" for sep in SEPARATORS)  # "[UNK]" left out
    assert vocabs["age_level"] == expected
    assert vocabs["hist_categories"] == ["c1"]  # the empty id of every row left out
    write_vocabularies(vocabs, str(tmp_path / "vocab"))
    assert read_vocabularies(str(tmp_path / "vocab")) == vocabs

    model = build_model(SPEC.features, vocabs, {}, ModelConfig(hidden=(4,)), example_batch(SPEC))
    lookup = model.encoder.lookups["age_level"]
    ids = lookup(tf.constant(expected + [OOV_TOKEN, "never seen"])).numpy()
    np.testing.assert_array_equal(ids, list(range(1, len(expected) + 1)) + [0, 0])
    assert lookup.vocabulary_size() == len(expected) + 1
