"""The CPM's view of the last K TPM snapshots: learned attention over them, and its merged serving table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from ecdctr.layers.core import TpmLookup, Untracked, known_from_rows, token_array

# The serving form of a TpmAggregator: one StringLookup + gather per entity feature over
# `TpmAggregator.merged_tables()`, features in name order, a zero vector for unseen ids, tables
# named `tpm_table_<feature>`. TpmLookup already is exactly that, so the merged form reuses it.
MergedTpmLookup = TpmLookup

# Score of a missing snapshot: finite (an id missing from every snapshot must not give NaN), and
# low enough that exp(score - max) is exactly 0 in float32, so missing snapshots get weight 0.
_MISSING_SCORE = -1e9
# Rows per step when merged_tables() runs the attention over whole tables.
_MERGE_CHUNK = 65536


class SnapshotAttention(keras.layers.Layer):
    """Attention over one id's K snapshot vectors e_1..e_K (oldest first): scores
    s_k = q · tanh(W e_k + b) + age_bias[K - k] depend only on the vectors and their age,
    softmax over the present snapshots, output Σ softmax_k e_k (zeros if none is present).

    Weights are created here, named `<layer name>/kernel|bias|query|age_bias` whatever the
    layer is nested in, so they transfer by name; `age_bias[0]` is the newest snapshot's.
    """

    def __init__(self, dim: int, snapshots: int, **kwargs):
        super().__init__(**kwargs)
        self.kernel = self.add_weight(name=f"{self.name}/kernel", shape=(dim, dim),
                                      initializer=keras.initializers.GlorotUniform())
        self.bias = self.add_weight(name=f"{self.name}/bias", shape=(dim,), initializer="zeros")
        self.query = self.add_weight(name=f"{self.name}/query", shape=(dim,),
                                     initializer=keras.initializers.RandomNormal(stddev=0.1))
        self.age_bias = self.add_weight(name=f"{self.name}/age_bias", shape=(snapshots,),
                                        initializer="zeros")
        self.built = True

    def snapshot_weights(self, vectors: tf.Tensor, present: tf.Tensor) -> tf.Tensor:
        """The attention weights [..., K] that call() pools with (0 for missing snapshots)."""
        hidden = tf.tanh(tf.matmul(vectors, self.kernel) + self.bias)
        scores = tf.reduce_sum(hidden * self.query, axis=-1) + tf.reverse(self.age_bias, [0])
        scores = tf.where(present, scores, _MISSING_SCORE)
        return tf.nn.softmax(scores, axis=-1) * tf.cast(present, scores.dtype)

    def call(self, vectors: tf.Tensor, present: tf.Tensor) -> tf.Tensor:
        """vectors [..., K, d] (zeros where missing), present bool [..., K] -> pooled [..., d]."""
        return tf.reduce_sum(self.snapshot_weights(vectors, present)[..., None] * vectors, axis=-2)


class TpmAggregator(keras.layers.Layer):
    """K TPM snapshots per entity feature -> attention over the snapshots -> one pooled vector.

    Per feature, the ids of all snapshots share one StringLookup (their union); snapshot k is a
    frozen table `tpm_snap{k}_<feature>` aligned to that union (zero rows where the id is
    missing) and `tpm_present_<feature>` [ids, K] records which snapshots hold each id. Only the
    attention (`tpm_attention_<feature>/...`) trains. An id's output is a fixed function of its
    own snapshot vectors, so after training `merged_tables()` precomputes it for every id and
    `MergedTpmLookup` serves it with one lookup per feature.

    Args:
        snapshots: oldest first; each maps entity feature name -> (keys, matrix [len(keys), d]).
            Every snapshot has the same features, each with the same d; keys may differ.
    Returns (call): [B, sum of d] — the pooled vectors concatenated in feature-name order.
    """

    def __init__(self, snapshots: Sequence[Mapping[str, tuple[Sequence[str], np.ndarray]]], **kwargs):
        super().__init__(**kwargs)
        dims = _validate(snapshots)
        self.feature_names = sorted(dims)
        self.snapshot_count = len(snapshots)
        self.keys: dict[str, list[str]] = Untracked()
        self.lookups: dict[str, keras.layers.StringLookup] = {}
        self.snapshot_tables: dict[str, list[tf.Variable]] = {}
        self.present: dict[str, tf.Variable] = {}
        self.attentions: dict[str, SnapshotAttention] = {}
        for name in self.feature_names:
            keys = list(dict.fromkeys(k for snapshot in snapshots for k in snapshot[name][0]))
            row_of = {key: row for row, key in enumerate(keys, start=1)}  # row 0: unseen ids
            present = np.zeros((len(keys) + 1, self.snapshot_count), bool)
            tables = []
            for k, snapshot in enumerate(snapshots):
                snapshot_keys, matrix = snapshot[name]
                rows = np.fromiter((row_of[key] for key in snapshot_keys), np.int64, len(snapshot_keys))
                aligned = np.zeros((len(keys) + 1, dims[name]), np.float32)
                aligned[rows] = matrix
                present[rows, k] = True
                tables.append(self._frozen(f"tpm_snap{k}_{name}", aligned))
            self.keys[name] = keys
            self.lookups[name] = keras.layers.StringLookup(
                vocabulary=token_array(keys), num_oov_indices=1, name=f"tpm_lookup_{name}")
            self.snapshot_tables[name] = tables
            self.present[name] = self._frozen(f"tpm_present_{name}", present)
            if self.snapshot_count > 1:  # over one snapshot attention is the identity
                self.attentions[name] = SnapshotAttention(dims[name], self.snapshot_count,
                                                          name=f"tpm_attention_{name}")

    def _frozen(self, name: str, value: np.ndarray) -> tf.Variable:
        # Zeros then assign: a Constant initializer would keep a second copy of the table alive.
        variable = self.add_weight(name=name, shape=value.shape, dtype=tf.as_dtype(value.dtype),
                                   initializer="zeros", trainable=False)
        variable.assign(value)
        return variable

    def snapshot_vectors(self, name: str, rows: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(vectors [..., K, d], present bool [..., K]) of one feature's union rows (0 = unseen)."""
        vectors = tf.stack([tf.gather(t, rows) for t in self.snapshot_tables[name]], axis=-2)
        return vectors, tf.gather(self.present[name], rows)

    def pooled(self, name: str, rows: tf.Tensor) -> tf.Tensor:
        """One feature's aggregated vectors of union rows (0 = unseen: zeros)."""
        if self.snapshot_count == 1:
            return tf.gather(self.snapshot_tables[name][0], rows)
        return self.attentions[name](*self.snapshot_vectors(name, rows))

    def call(self, inputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
        return self.from_rows(self.rows(inputs))

    def rows(self, inputs: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Per feature, the union row of each raw id (0: in no snapshot)."""
        return {n: self.lookups[n](inputs[n]) for n in self.feature_names}

    def from_rows(self, rows: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """call on the output of rows: the pooled vectors, concatenated in feature-name order."""
        return tf.concat([self.pooled(n, rows[n]) for n in self.feature_names], axis=-1)

    def known(self, inputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """[B, features] 1.0 where the id is in some snapshot, 0.0 where it gets zeros."""
        return known_from_rows(self.rows(inputs), self.feature_names)

    def merged_tables(self) -> dict[str, tuple[list[str], np.ndarray]]:
        """Per feature: (every id of any snapshot, its call() output [ids, d]) with the current
        attention weights — the one table per feature that serving looks up (MergedTpmLookup)."""
        merged = {}
        for name in self.feature_names:
            size = len(self.keys[name]) + 1
            parts = [self.pooled(name, tf.range(start, min(start + _MERGE_CHUNK, size),
                                                dtype=tf.int64)).numpy()
                     for start in range(1, size, _MERGE_CHUNK)]
            merged[name] = (list(self.keys[name]), np.concatenate(parts, axis=0))
        return merged


def _validate(snapshots: Sequence[Mapping[str, tuple[Sequence[str], np.ndarray]]]) -> dict[str, int]:
    """Each entity feature's dimension, after checking every snapshot agrees with the first."""
    if not snapshots:
        raise ValueError("TpmAggregator needs at least one TPM snapshot, got none")
    if not snapshots[0]:
        raise ValueError("TPM snapshot 0 (oldest) has no entity features")
    expected = sorted(snapshots[0])
    dims: dict[str, int] = {}
    for k, snapshot in enumerate(snapshots):
        where = f"TPM snapshot {k} (0 = oldest, of {len(snapshots)})"
        if sorted(snapshot) != expected:
            missing = sorted(set(expected) - set(snapshot))
            extra = sorted(set(snapshot) - set(expected))
            raise ValueError(f"{where}: entity features differ from snapshot 0 — missing "
                             f"{missing}, extra {extra}. Fix: export the same entity features "
                             f"in every snapshot, or drop the mismatched snapshot")
        for name in expected:
            keys, matrix = snapshot[name]
            shape = np.shape(matrix)
            if len(shape) != 2 or shape[0] != len(keys):
                raise ValueError(f"{where}, feature {name!r}: matrix of shape {shape} for "
                                 f"{len(keys)} keys; expected [{len(keys)}, d]")
            if len(set(keys)) != len(keys):
                raise ValueError(f"{where}, feature {name!r}: keys repeat; each id needs one row")
            dim = dims.setdefault(name, shape[1])
            if shape[1] != dim:
                raise ValueError(f"{where}, feature {name!r}: dimension {shape[1]}, but snapshot 0 "
                                 f"has {dim}. Fix: snapshots must share the TPM's embedding_dim")
    for name in expected:
        if not any(len(snapshot[name][0]) for snapshot in snapshots):
            raise ValueError(f"feature {name!r} has no ids in any of the {len(snapshots)} TPM "
                             f"snapshots; nothing to look up")
    return dims
