"""tf.data input built from the spec: reads the Beam job's TFRecords and parses them in batches."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

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


# A row's request id hashes into one of this many buckets; a held-out share is a range of them:
# the fits' validation shares from the bottom ([0, share)), the daily evaluation share of day D
# from the top ([HASH_BUCKETS - share, HASH_BUCKETS)), so the two never meet.
HASH_BUCKETS = 1000


def _crc32_table() -> list[int]:
    """The byte table of the CRC-32 that zlib computes (reflected polynomial 0xEDB88320)."""
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xEDB88320 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32_TABLE = _crc32_table()


def crc32(strings: tf.Tensor) -> tf.Tensor:
    """zlib.crc32 of each string of a 1-D string tensor (int64), computed in the graph: the
    hash the build slices a day by (pipelines.build), so no row leaves tf.data for Python."""
    chars = tf.strings.bytes_split(strings)
    codes = tf.cast(tf.io.decode_raw(chars.flat_values, tf.uint8, fixed_length=1)[:, 0], tf.int64)
    padded = tf.RaggedTensor.from_row_splits(codes, chars.row_splits).to_tensor(-1)
    table = tf.constant(_CRC32_TABLE, tf.int64)

    def step(crc: tf.Tensor, byte: tf.Tensor) -> tf.Tensor:
        index = tf.bitwise.bitwise_and(tf.bitwise.bitwise_xor(crc, byte), 255)
        updated = tf.bitwise.bitwise_xor(tf.gather(table, index), tf.bitwise.right_shift(crc, 8))
        return tf.where(byte >= 0, updated, crc)  # -1: past the string's end

    start = tf.fill(tf.shape(strings), tf.constant(0xFFFFFFFF, tf.int64))
    return tf.bitwise.bitwise_xor(tf.foldl(step, tf.transpose(padded), initializer=start),
                                  tf.constant(0xFFFFFFFF, tf.int64))


def in_buckets(request_ids: tf.Tensor, bounds: tf.Tensor) -> tf.Tensor:
    """Whether each request id hashes (crc32 % HASH_BUCKETS) into one of the bucket ranges
    bounds ([ranges, 2]: first, end): the one test of a held-out row."""
    bucket = (crc32(request_ids) % HASH_BUCKETS)[:, None]
    return tf.reduce_any((bucket >= bounds[:, 0]) & (bucket < bounds[:, 1]), axis=1)


def share_buckets(share: float, top: bool = False) -> tuple[int, int]:
    """[first, end) of the hash buckets a share of requests holds: the lowest round(share *
    HASH_BUCKETS) buckets, or with top the highest."""
    count = round(share * HASH_BUCKETS)
    return (HASH_BUCKETS - count, HASH_BUCKETS) if top else (0, count)


@dataclass(frozen=True)
class Share:
    """The rows of `files` whose request id hashes into buckets [first, end)."""

    first: int
    end: int
    files: frozenset[str]


@dataclass(frozen=True)
class HeldOut:
    """Shares of requests held out of training by request-id hash: a row of a share's files is
    held out when crc32(request id) % HASH_BUCKETS lies in the share's bucket range. `held`
    says which side a dataset reads: the rows of any share (a validation or evaluation set),
    or every other row (the training set). request_id: the column the hash reads."""

    request_id: str
    shares: tuple[Share, ...]
    held: bool

    @classmethod
    def of(cls, spec: Spec, share: float, files: Iterable[str], held: bool, top: bool = False
           ) -> HeldOut:
        """One share (share_buckets) of files' requests."""
        return cls(spec.request_id, (Share(*share_buckets(share, top), frozenset(files)),), held)

    def bounds(self, file: str) -> list[tuple[int, int]]:
        """The bucket range each share holds in file ((0, 0), empty, where it holds none)."""
        return [(s.first, s.end) if file in s.files else (0, 0) for s in self.shares]

    def is_held(self, serialized: tf.Tensor, bounds: tf.Tensor) -> tf.Tensor:
        """Whether each serialized Example of a batch lies in one of the bucket ranges bounds
        ([shares, 2]: first, end)."""
        ids = tf.io.parse_example(serialized, {self.request_id: tf.io.FixedLenFeature(
            [], tf.string, default_value="")})[self.request_id]
        return in_buckets(ids, bounds)

    def records(self, files: Sequence[str], shuffle: bool, seed: int) -> tf.data.Dataset:
        """The serialized Examples of files this side reads, file by file (shuffled: in a
        seeded file order): the held side reads only the shares' files; the other reads the
        rest of them and every other file whole."""
        held_files = frozenset().union(*(s.files for s in self.shares))
        if self.held:
            files = [f for f in files if f in held_files]
        bounds = [self.bounds(f) for f in files]
        split = [f in held_files for f in files]
        ds = tf.data.Dataset.from_tensor_slices((list(files), split, tf.constant(
            bounds, tf.int64, shape=[len(files), len(self.shares), 2])))
        if shuffle:
            ds = ds.shuffle(len(files), seed=seed)

        def read(file: tf.Tensor, in_split: tf.Tensor, ranges: tf.Tensor) -> tf.data.Dataset:
            def keep(batch: tf.Tensor) -> tf.Tensor:
                held = self.is_held(batch, ranges)
                return tf.boolean_mask(batch, held if self.held else ~held)

            records = tf.data.TFRecordDataset(file, compression_type="GZIP").batch(4096)
            return records.map(lambda b: tf.cond(in_split, lambda: keep(b), lambda: b)).unbatch()

        return ds.flat_map(read)


def held_out_counts(spec: Spec, files: Sequence[str], share: float, top: bool = False
                    ) -> tuple[int, int]:
    """(rows, clicks) of the held-out share (HeldOut.of) of files, read once: parses only the
    request id and the label, in one graph traced once per process (a fit's validation grows
    a day at a time, so this runs once per day of the window)."""
    if not files:
        return 0, 0
    rows, clicks = _held_out_counter(spec.request_id, spec.label)(
        tf.constant(list(files), tf.string), tf.constant(share_buckets(share, top), tf.int64))
    return int(rows), int(clicks)


@functools.cache
def _held_out_counter(request_id: str, label: str) -> Callable[[tf.Tensor, tf.Tensor], tuple]:
    """held_out_counts' graph for one pair of columns: (files, [first, end) of the buckets) ->
    (rows, clicks) of the rows whose request id hashes into the range (in_buckets)."""
    description = {request_id: tf.io.FixedLenFeature([], tf.string, default_value=""),
                   label: tf.io.FixedLenFeature([], tf.int64)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([2], tf.int64)],
                 autograph=False)
    def count(files: tf.Tensor, bounds: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        def add(totals: tuple[tf.Tensor, tf.Tensor], batch: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            parsed = tf.io.parse_example(batch, description)
            labels = tf.boolean_mask(parsed[label], in_buckets(parsed[request_id], bounds[None]))
            return totals[0] + tf.size(labels, out_type=tf.int64), totals[1] + tf.reduce_sum(labels)

        records = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(8192)
        zero = tf.constant(0, tf.int64)
        return records.reduce((zero, zero), add)

    return count


def make_dataset(spec: Spec, files: Sequence[str], batch_size: int, shuffle: bool = False,
                 seed: int = 0, shuffle_buffer: int = 50_000,
                 shard: tuple[int, Sequence[int]] | None = None,
                 preprocess: Callable[[dict], dict] | None = None,
                 rows: int | None = None, held_out: HeldOut | None = None) -> tf.data.Dataset:
    """A dataset of (features, labels) batches; shuffling is seeded so runs repeat.
    shard=(count, indices): each batch of batch_size rows is cut into `count` strided parts
    (rows i, i + count, ...) and only parts `indices` are yielded, one batch each: the
    replicas of a distributed step together read the batch one process reads (each worker
    decompresses every file, parses only its rows). preprocess (e.g. CtrModel.preprocess)
    runs on each parsed batch in the same parallel map, so its lookups leave the train step.
    rows (the files' Example count, from the build's stats) gives the dataset its number of
    batches (tf.data raises if the files hold another count), which lets training run several
    steps per call (ecdctr.training.loop.fit). held_out: only one side of a request-id split
    is read (HeldOut; rows is then that side's count)."""
    if not files:
        raise ValueError("no input files: the requested days hold no examples.")
    # Files are read one after another: on 2 cores a parallel interleave of GZIP readers
    # measured about 2x slower (benchmarks/BENCHMARKS.md); the shuffle buffer mixes rows.
    if held_out is not None:
        ds = held_out.records(files, shuffle, seed)
    else:
        ds = tf.data.Dataset.from_tensor_slices(list(files))
        if shuffle:
            ds = ds.shuffle(len(files), seed=seed)
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
