"""tf.data input built from the spec: reads the Beam job's TFRecords and parses them in batches."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence

import tensorflow as tf

from ecdctr.io import layout, storage
from ecdctr.spec.feature_spec import Spec


def feature_description(spec: Spec, with_label: bool = True) -> dict:
    """tf.io.parse_example description keyed by raw column; missing values take the spec's
    defaults, a missing list is empty."""
    desc: dict = {}
    if with_label:
        desc[spec.label] = tf.io.FixedLenFeature([], tf.int64)
    for f in spec.features:
        if f.column in desc:
            continue
        if f.kind == "numeric":
            desc[f.column] = tf.io.FixedLenFeature([], tf.float32, default_value=f.default)
        elif f.kind == "categorical":
            desc[f.column] = tf.io.FixedLenFeature([], tf.string, default_value=f.default)
        else:
            desc[f.column] = tf.io.RaggedFeature(tf.string, row_splits_dtype=tf.int64)
    return desc


def features_by_name(spec: Spec, parsed: dict) -> dict[str, tf.Tensor]:
    """Maps parsed columns to the spec's feature names (two features may read one column)."""
    return {f.name: parsed[f.column] for f in spec.features}


def serving_features(spec: Spec, parsed: dict) -> dict[str, tf.Tensor]:
    """features_by_name for the serving signatures: a NaN or infinite number takes the
    feature's default, as a missing one does. The build quarantines such rows, so a model never
    learned what they mean (and training input never holds one: no cost on that path)."""
    out = features_by_name(spec, parsed)
    for f in spec.features:
        if f.kind == "numeric":
            value = out[f.name]
            out[f.name] = tf.where(tf.math.is_finite(value), value, tf.cast(f.default, value.dtype))
    return out


def parse_batch(spec: Spec, serialized: tf.Tensor) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """Parses a batch of serialized Examples into (features by name, float labels [B, 1])."""
    parsed = tf.io.parse_example(serialized, feature_description(spec))
    label = tf.cast(tf.reshape(parsed[spec.label], [-1, 1]), tf.float32)
    return features_by_name(spec, parsed), label


def example_batch(spec: Spec) -> dict[str, tf.Tensor]:
    """One row of every feature at its spec default (an empty Example parsed): enough to
    create a model's variables without reading any data."""
    empty = tf.constant([tf.train.Example().SerializeToString()])
    return features_by_name(spec, tf.io.parse_example(empty, feature_description(spec, False)))


def partition_files(work: str, source: str, dates: Iterable[dt.date]) -> list[str]:
    """The TFRecord shards of the given built days; a day that is not built is an error."""
    files: list[str] = []
    for date in dates:
        folder = layout.examples_folder(work, source, date)
        if not storage.isdir(folder):
            raise FileNotFoundError(f"{folder}: day not built. Fix: run `ecdctr build` for "
                                    f"{source} {date.isoformat()} first.")
        files.extend(storage.glob(storage.join(folder, "*.tfrecord.gz")))
    return files


def make_dataset(spec: Spec, files: Sequence[str], batch_size: int, shuffle: bool = False,
                 seed: int = 0, shuffle_buffer: int = 50_000,
                 shard: tuple[int, Sequence[int]] | None = None,
                 preprocess: Callable[[dict], dict] | None = None,
                 rows: int | None = None) -> tf.data.Dataset:
    """A dataset of (features, labels) batches; shuffling is seeded so runs repeat.
    shard=(count, indices): each batch of batch_size rows is cut into `count` strided parts
    (rows i, i + count, ...) and only parts `indices` are yielded, one batch each: the
    replicas of a distributed step together read the batch one process reads (each worker
    decompresses every file, parses only its rows). preprocess (e.g. CtrModel.preprocess)
    runs on each parsed batch in the same parallel map, so its lookups leave the train step.
    rows (the files' Example count, from the build's stats) gives the dataset its number of
    batches (tf.data raises if the files hold another count), which lets training run several
    steps per call (ecdctr.training.loop.fit)."""
    if not files:
        raise ValueError("no input files: the requested days hold no examples.")
    ds = tf.data.Dataset.from_tensor_slices(list(files))
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed)
    # Files are read one after another: on 2 cores a parallel interleave of GZIP readers
    # measured about 2x slower (benchmarks/BENCHMARKS.md); the shuffle buffer mixes rows.
    ds = tf.data.TFRecordDataset(ds, compression_type="GZIP")
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if shard is not None:
        count, indices = shard
        parts = tf.constant(list(indices), tf.int64)
        ds = ds.flat_map(lambda rows: tf.data.Dataset.from_tensor_slices(parts).map(
            lambda i: tf.strided_slice(rows, [i], [tf.shape(rows, tf.int64)[0]], [count])))
    ds = ds.map(lambda s: preprocessed_batch(spec, s, preprocess), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    if rows is not None:
        batches = -(-rows // batch_size) * (len(shard[1]) if shard is not None else 1)
        ds = ds.apply(tf.data.experimental.assert_cardinality(batches))
    return ds


def preprocessed_batch(spec: Spec, serialized: tf.Tensor, preprocess: Callable[[dict], dict] | None
                       ) -> tuple[dict, tf.Tensor]:
    """parse_batch, then preprocess on the features when given."""
    features, label = parse_batch(spec, serialized)
    return (preprocess(features) if preprocess is not None else features), label
