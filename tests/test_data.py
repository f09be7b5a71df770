"""Tests for the tf.data input and the vocabulary merge."""

import datetime as dt
import random
import zlib

import pytest
import tensorflow as tf

from ecdctr.data.datasets import (
    HASH_BUCKETS,
    HeldOut,
    crc32,
    held_out_counts,
    make_dataset,
    partition_files,
    share_buckets,
)
from ecdctr.data.rows import RowParser, to_example
from ecdctr.data.vocab import build_vocabularies, read_vocabularies, write_vocabularies
from ecdctr.io.layout import counts_file
from ecdctr.spec.feature_spec import load_spec

SPEC = load_spec("features/default.yaml")


def test_dataset_parses_batches_from_gzip_tfrecords(tmp_path):
    parser = RowParser(SPEC)
    path = str(tmp_path / "part.tfrecord.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as w:
        for i in range(10):
            row = parser.parse({"request_id": str(i), "ts": 5, "click": i % 2, "user_id": f"u{i}",
                                "hist_categories": ["a"] * (i % 3)})
            w.write(to_example(SPEC, row).SerializeToString())
    batches = list(make_dataset(SPEC, [path], batch_size=4))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    features, labels = batches[0]
    assert labels.numpy().ravel().tolist() == [0, 1, 0, 1]
    assert features["user_id"].numpy().tolist() == [b"u0", b"u1", b"u2", b"u3"]
    assert features["hist_categories"].row_lengths().numpy().tolist() == [0, 1, 2, 0]
    assert features["price"].numpy().tolist() == [0.0] * 4  # spec default


def test_crc32_in_the_graph_is_zlibs():
    rng = random.Random(3)
    strings = [bytes(rng.randrange(256) for _ in range(rng.randrange(40))) for _ in range(300)]
    strings += [b"", b"r-000123", "é".encode()]
    assert crc32(tf.constant(strings)).numpy().tolist() == [zlib.crc32(s) for s in strings]


def _day_file(path, rows, first_id=0):
    parser = RowParser(SPEC)
    with tf.io.TFRecordWriter(path, options="GZIP") as w:
        for i in range(first_id, first_id + rows):
            row = parser.parse({"request_id": f"req-{i}", "ts": 5, "click": int(i % 3 == 0),
                                "user_id": f"u{i}"})
            w.write(to_example(SPEC, row).SerializeToString())
    return path


def _ids(dataset):
    return [u.decode() for features, _ in dataset for u in features["user_id"].numpy()]


def test_request_share_split_is_disjoint_stable_and_reads_other_files_whole(tmp_path):
    held_day = _day_file(str(tmp_path / "new.tfrecord.gz"), 300)
    old_day = _day_file(str(tmp_path / "old.tfrecord.gz"), 50, first_id=1000)
    files = [old_day, held_day]

    def side(held, shuffle=False, seed=0):
        split = HeldOut.of(SPEC, 0.2, [held_day], held)
        return _ids(make_dataset(SPEC, files, 64, shuffle=shuffle, seed=seed, held_out=split))

    held, rest = side(True), side(False)
    expected = {f"u{i}" for i in range(300)
                if zlib.crc32(f"req-{i}".encode()) % HASH_BUCKETS < 0.2 * HASH_BUCKETS}
    assert set(held) == expected and 40 < len(held) < 80  # the request-id rule, about 20%
    assert set(held).isdisjoint(rest) and len(held) + len(rest) == 350
    assert {f"u{i}" for i in range(1000, 1050)} <= set(rest)  # a day outside the split: whole
    assert side(True) == held and sorted(side(False, shuffle=True, seed=7)) == sorted(rest)
    clicks = sum(int(u[1:]) % 3 == 0 for u in held)
    assert held_out_counts(SPEC, [held_day], 0.2) == (len(held), clicks)
    sized = make_dataset(SPEC, files, 64, held_out=HeldOut.of(SPEC, 0.2, [held_day], False),
                         rows=len(rest))
    assert len(_ids(sized)) == len(rest)  # the count given as rows matches the rows read


def test_an_evaluation_share_from_the_top_is_disjoint_from_the_validation_share(tmp_path):
    """The daily evaluation share of a day takes the top buckets, a fit's validation share the
    bottom ones; training leaves out both, and each side reads its own range only."""
    day = _day_file(str(tmp_path / "day.tfrecord.gz"), 600)
    bucket = {f"u{i}": zlib.crc32(f"req-{i}".encode()) % HASH_BUCKETS for i in range(600)}
    validation = HeldOut.of(SPEC, 0.3, [day], True)
    evaluation = HeldOut.of(SPEC, 0.2, [day], True, top=True)
    assert share_buckets(0.2, top=True) == (800, 1000) and share_buckets(0.3) == (0, 300)
    valid = set(_ids(make_dataset(SPEC, [day], 64, held_out=validation)))
    judged = set(_ids(make_dataset(SPEC, [day], 64, held_out=evaluation)))
    training = HeldOut(SPEC.request_id, validation.shares + evaluation.shares, held=False)
    trained = _ids(make_dataset(SPEC, [day], 64, shuffle=True, held_out=training))
    assert judged == {u for u, b in bucket.items() if b >= 800} and 80 < len(judged) < 160
    assert valid == {u for u, b in bucket.items() if b < 300}
    assert set(trained) == {u for u, b in bucket.items() if 300 <= b < 800}
    assert len(trained) + len(valid) + len(judged) == 600
    assert held_out_counts(SPEC, [day], 0.2, top=True)[0] == len(judged)


def test_missing_day_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="day not built.*ecdctr build"):
        partition_files(str(tmp_path), "ad", [dt.date(2026, 1, 1)])


def test_vocabularies_apply_min_count_and_max_size(tmp_path):
    work = str(tmp_path)
    day = dt.date(2026, 1, 1)
    for source, counts in (("natural", {"a": 5, "b": 1, "c": 3}), ("ad", {"b": 1, "d": 9})):
        path = counts_file(work, source, day, "user_id")
        tf.io.gfile.makedirs(path.rsplit("/", 1)[0])
        with open(path, "w") as f:
            f.writelines(f"{t}\t{c}\n" for t, c in counts.items())
    vocabs = build_vocabularies(SPEC, work, [("natural", day), ("ad", day)])
    assert vocabs["user_id"] == ["d", "a", "c", "b"]  # min_count 2 keeps b (1 + 1)
    assert vocabs["gender"] == ["<no-vocabulary>"]  # no counts: a placeholder keeps lookups valid
    write_vocabularies(vocabs, str(tmp_path / "vocab"))
    assert read_vocabularies(str(tmp_path / "vocab")) == vocabs
