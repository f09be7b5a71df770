"""Tests for raw-row validation and Example encoding."""

import datetime as dt

import pytest
import tensorflow as tf

from ecdctr.data.datasets import parse_batch
from ecdctr.data.rows import (
    ExampleEncoder,
    ParsedRow,
    RowEncoder,
    RowError,
    RowParser,
    domain_key,
    to_example,
)
from ecdctr.spec.feature_spec import load_spec

SPEC = load_spec("features/default.yaml")
DAY = dt.date(2026, 3, 1)
T0 = int(dt.datetime(2026, 3, 1, tzinfo=dt.UTC).timestamp())


def _row(**changes):
    row = {"request_id": "r1", "ts": T0 + 60, "click": 1, "user_id": "u1", "item_id": 7,
           "scenario": "s1", "position": "p0", "user_segment": "g2", "price": "12.5",
           "hist_categories": "c1|c2"}
    row.update(changes)
    return {k: v for k, v in row.items() if v is not ...}


def test_good_row_types_and_example_round_trip():
    parsed = RowParser(SPEC).parse(_row(extra_col=3), DAY)
    assert parsed.values["item_id"] == "7" and parsed.values["price"] == 12.5
    assert parsed.values["hist_categories"] == ["c1", "c2"]
    assert parsed.dropped_columns == ["extra_col"]
    assert domain_key(SPEC, parsed) == "s1|p0|g2"
    features, label = parse_batch(SPEC, tf.constant([to_example(SPEC, parsed).SerializeToString()]))
    assert label.numpy().tolist() == [[1.0]]
    assert features["user_id"].numpy().tolist() == [b"u1"]
    assert features["gender"].numpy().tolist() == [b""]  # missing -> spec default
    assert features["price_band"].numpy().tolist() == [12.5]
    assert features["hist_categories"].to_list() == [[b"c1", b"c2"]]


@pytest.mark.parametrize("changes, reason", [
    ({"click": ...}, "missing_label"),
    ({"click": 2}, "bad_label"),
    ({"click": "yes"}, "bad_label"),
    ({"ts": ...}, "missing_timestamp"),
    ({"ts": "soon"}, "bad_timestamp"),
    ({"ts": T0 - 1}, "timestamp_outside_partition"),
    ({"ts": T0 + 86400}, "timestamp_outside_partition"),
    ({"price": "cheap"}, "wrong_type"),
    ({"price": float("nan")}, "non_finite"),
    ({"price": float("inf")}, "non_finite"),
    ({"user_id": {"a": 1}}, "wrong_type"),
    ({"user_id": 1.5}, "wrong_type"),
    ({"hist_categories": 3}, "wrong_type"),
    ({"request_id": ...}, "missing_request_id"),
])
def test_bad_rows_raise_with_reason(changes, reason):
    with pytest.raises(RowError) as e:
        RowParser(SPEC).parse(_row(**changes), DAY)
    assert e.value.reason == reason


def test_not_an_object():
    with pytest.raises(RowError) as e:
        RowParser(SPEC).parse([1, 2], DAY)
    assert e.value.reason == "not_an_object"


def test_parse_features_needs_no_label():
    values, dropped = RowParser(SPEC).parse_features({"user_id": "u9", "price": 3})
    assert values == {"user_id": "u9", "price": 3.0} and dropped == []


def test_example_encoder_writes_the_same_examples_as_to_example():
    encode = ExampleEncoder(SPEC)
    rows = [
        ParsedRow("r1", 1_700_000_000, 1, {"user_id": "u1", "price": 9.5,
                                           "hist_categories": ["c1", "c2"]}),
        ParsedRow("r2", 1_700_000_001, 0, {"user_id": "u1", "price": 0.1,
                                           "hist_categories": []}),  # cached entry, empty list
        ParsedRow("é" * 300, -5, 1, {"user_id": "ü" * 200, "brand": "", "price": 3.4028234663852886e38,
                                     "category": "c" * 119, "gender": "g" * 120}),
        ParsedRow("big", 2**62, 0, {"hist_categories": ["a" * 5000] * 40, "price": -1e-40}),
        ParsedRow("none", 0, 0, {}),
    ]
    for parsed in rows + rows:
        assert tf.train.Example.FromString(encode(parsed)) == to_example(SPEC, parsed)


def _json_row(**changes):
    row = {"request_id": "r1", "ts": T0 + 60, "click": 1, "user_id": "u1", "item_id": "i7",
           "gender": "f", "scenario": "s1", "position": "p0", "user_segment": "g2",
           "category": "c1", "brand": "b1", "price": 12.5, "hist_categories": ["c1", "c2"]}
    row.update(changes)
    return {k: v for k, v in row.items() if v is not ...}


ROWS = [  # rows as json.loads gives them, plus CSV-like ones; good and bad
    _json_row(), _json_row(request_id="r2", user_id="u2", price=3), _json_row(extra=1, more=None),
    _json_row(click=0, hist_categories=[]), _json_row(user_id=" ", brand="", gender=None),
    _json_row(price=...), _json_row(price=None), _json_row(price=" "), _json_row(price="12.5"),
    _json_row(price=3.4028234663852886e38), _json_row(price=-3.4028234663852886e38),
    _json_row(price=3.5e38), _json_row(price=10**39), _json_row(price=float("nan")),
    _json_row(price=float("-inf")), _json_row(price=True), _json_row(price=[1.0]),
    _json_row(price=2**60 + 1), _json_row(price=-0.0), _json_row(price=1e-45),
    _json_row(user_id=7), _json_row(user_id=True), _json_row(user_id=1.5), _json_row(user_id={}),
    _json_row(user_id="ü" * 3), _json_row(user_id="\ud800"), _json_row(item_id=""),
    _json_row(hist_categories="c1|c2"), _json_row(hist_categories=["c1", 5]),
    _json_row(hist_categories=["é", "c2"]), _json_row(hist_categories=["", " "]),
    _json_row(hist_categories=["\ud800"]), _json_row(hist_categories=[None]),
    _json_row(hist_categories=("c1",)), _json_row(hist_categories=3), _json_row(hist_categories={}),
    _json_row(request_id=...), _json_row(request_id=""), _json_row(request_id="  "),
    _json_row(request_id=12), _json_row(request_id="é"), _json_row(request_id="\ud800"),
    _json_row(request_id=True), _json_row(request_id="r" * 20000),
    _json_row(click=...), _json_row(click=None), _json_row(click=True), _json_row(click=2),
    _json_row(click=-1), _json_row(click=1.0), _json_row(click="1"), _json_row(click=" 0 "),
    _json_row(ts=...), _json_row(ts=float(T0 + 5)), _json_row(ts=str(T0)), _json_row(ts=T0 - 1),
    _json_row(ts=T0), _json_row(ts=T0 + 86399), _json_row(ts=T0 + 86400), _json_row(ts=True),
    _json_row(ts=10**40), _json_row(ts=2**53 + 1), _json_row(ts=-(2**53) - 1),
    _json_row(ts=2**28 - 1), _json_row(ts=2**28), _json_row(ts=2**35 - 1), _json_row(ts=2**35),
    _json_row(ts=0), _json_row(ts=-5), _json_row(ts=T0 + 12345, request_id="é" * 70),
    _json_row(request_id="x" * 130), _json_row(request_id="y" * 17000),
    _row(), _row(extra_col=3), {"request_id": "r1"}, {}, [1, 2], "text", None, 3,
]


def _outcome(call, row, date):
    try:
        parsed, serialized = call(row, date)
    except RowError as e:
        return ("error", e.reason, str(e))
    return ("ok", parsed, serialized)


@pytest.mark.parametrize("date", [DAY, None])
def test_row_encoder_gives_what_parse_then_encode_give(date):
    """The fused path gives the same ParsedRow and the same bytes as RowParser.parse then
    ExampleEncoder, or the same RowError (reason and message), on first sight of each value
    and from its cache."""
    parser, encode, fused = RowParser(SPEC), ExampleEncoder(SPEC), RowEncoder(SPEC)

    def reference(row, day):
        parsed = parser.parse(row, day)
        return parsed, encode(parsed)

    for row in ROWS + ROWS:
        assert _outcome(fused, row, date) == _outcome(reference, row, date), row


def test_row_encoder_takes_the_fused_path_for_json_rows(monkeypatch):
    fused = RowEncoder(SPEC)
    monkeypatch.setattr(fused, "slow", None)  # a call to the reference path would fail
    for i in range(3):
        parsed, serialized = fused(_json_row(request_id=f"r{i}", price=i, user_id="u" * i), DAY)
        assert tf.train.Example.FromString(serialized) == to_example(SPEC, parsed)
    parsed, _ = fused(_json_row(gender=" ", brand=None, extra="x"), DAY)
    assert "gender" not in parsed.values and parsed.dropped_columns == ["extra"]
