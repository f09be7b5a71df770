"""Tests for the tf.data input and the vocabulary merge."""

import datetime as dt

import pytest
import tensorflow as tf

from ecdctr.data.datasets import make_dataset, partition_files
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
