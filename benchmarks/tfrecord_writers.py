"""GZIP TFRecord writers on the same serialized Examples: the build's own framing against
Beam's and TensorFlow's writers, in records per CPU second (median of --repeats, arms
alternating).

    python benchmarks/tfrecord_writers.py [--rows 45000] [--repeats 5]

Arms, each writing every record to one .tfrecord.gz file:
  build_frames      ecdctr.io.tfrecord.ShardWriter: tfrecord_frame (google-crc32c, struct) joined
                    about 1 MB at a time into gzip.GzipFile over a FileSystems file (what the
                    build runs)
  beam_write_record apache_beam.io.tfrecordio._TFRecordUtil.write_record, one call per record,
                    into the same gzip.GzipFile over a FileSystems file
  tf_writer         tf.io.TFRecordWriter(GZIP), C++ framing and zlib (local paths and TF's
                    own file systems only, not Beam's FileSystems)
The records are the first --rows rows of the beam_vs_plain logs (benchmarks/.data, made by
run.py) parsed and encoded as the build does. All arms write byte-identical records
(checked) at zlib level 6.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import glob
import gzip
import itertools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

# ruff: noqa: I001  (keep `import ecdctr` ahead of TensorFlow, whatever the import sorter wants)
import ecdctr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow as tf
from apache_beam.io.tfrecordio import _TFRecordUtil

from ecdctr.data.rows import ExampleEncoder, RowParser
from ecdctr.spec.feature_spec import load_spec
from ecdctr.io.beam_files import create
from ecdctr.io.tfrecord import ShardWriter

ROOT = Path(__file__).resolve().parents[1]


def records(rows: int) -> list[bytes]:
    spec = load_spec(str(ROOT / "features" / "default.yaml"))
    parser, encode = RowParser(spec), ExampleEncoder(spec)
    path = sorted(glob.glob(str(ROOT / "benchmarks" / ".data" / "logs-*" / "natural" / "date=*"
                                / "*.jsonl.gz")))[0]
    date = dt.date.fromisoformat(Path(path).parent.name[len("date="):])
    with gzip.open(path, "rb") as f:
        return [encode(parser.parse(json.loads(line), date)) for line in itertools.islice(f, rows)]


def build_frames(data: list[bytes], path: str) -> None:
    with contextlib.ExitStack() as stack:
        shards = ShardWriter(os.path.dirname(path), 1, stack)
        for record in data:
            shards.write(0, record)
        shards.close()


def beam_write_record(data: list[bytes], path: str) -> None:
    with create(path) as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6,
                                            mtime=0) as out:
        for record in data:
            _TFRecordUtil.write_record(out, record)


def tf_writer(data: list[bytes], path: str) -> None:
    options = tf.io.TFRecordOptions(compression_type="GZIP", compression_level=6)
    with tf.io.TFRecordWriter(path, options) as writer:
        for record in data:
            writer.write(record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=45_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    data = records(args.rows)
    arms = {"build_frames": build_frames, "beam_write_record": beam_write_record,
            "tf_writer": tf_writer}
    rates: dict[str, list[float]] = {name: [] for name in arms}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            names = list(arms)
            for name in names[r % len(names):] + names[:r % len(names)]:
                path = os.path.join(tmp, name, "part-00000-of-00001.tfrecord.gz")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                began = time.process_time()
                arms[name](data, path)
                rates[name].append(len(data) / (time.process_time() - began))
        for name in arms:  # every arm wrote the same records
            path = os.path.join(tmp, name, "part-00000-of-00001.tfrecord.gz")
            written = [r.numpy() for r in tf.data.TFRecordDataset(path, "GZIP")]
            assert written == data, name
    base = statistics.median(rates["build_frames"])
    print(f"{len(data):,} records of {sum(map(len, data)) / len(data):.0f} bytes, "
          f"{args.repeats} repeats, load {os.getloadavg()[0]:.2f}")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:18s} {median:>10,.0f} records/CPU-s  ({median / base:.2f}x build_frames)")


if __name__ == "__main__":
    main()
