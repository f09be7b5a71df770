"""Keras layers: the spec-driven feature encoder, the frozen TPM embedding lookup and the
helpers that fold a tower's constants for serving."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from ecdctr.spec.feature_spec import Feature

# Key of a list feature's mean weights in FeatureEncoder.preprocess (a name never holds "/").
LIST_WEIGHTS = "/weights"


class Untracked(dict):
    """A dict that a Keras layer holds without tracking it. A tracked dict or list (Keras wraps
    one assigned to a layer) is walked item by item whenever the layer's variables are
    gathered, which tf.saved_model.save alone does ~1,000 times: with a vocabulary of 1M ids
    held so, an export spent 170 CPU seconds walking ids. Holds no variables or layers."""


def token_array(tokens: Sequence[str]) -> np.ndarray:
    """Tokens for a StringLookup's vocabulary: an array, which the lookup keeps as one value
    (a list it keeps is tracked and walked, see Untracked); of objects, 8 bytes a token."""
    return np.asarray(tokens, dtype=object)


class FeatureEncoder(keras.layers.Layer):
    """Raw feature tensors -> one dense vector: vocabulary/hash/bucket ids through embeddings,
    normalised numerics as plain values. Lookups live in the graph, so serving sees raw values."""

    def __init__(self, features: Sequence[Feature], vocabs: Mapping[str, Sequence[str]],
                 numeric_stats: Mapping[str, tuple[float, float]], **kwargs):
        super().__init__(**kwargs)
        self.features = tuple(features)
        self.vocabs = Untracked({f.name: list(vocabs[f.name]) for f in self.features if f.uses_vocab})
        self.numeric_stats = dict(numeric_stats)
        self.lookups: dict[str, keras.layers.Layer] = {}
        self.embeddings: dict[str, keras.layers.Embedding] = {}
        for f in self.features:
            if f.uses_vocab:
                lookup = keras.layers.StringLookup(vocabulary=token_array(self.vocabs[f.name]),
                                                   num_oov_indices=1, name=f"lookup_{f.name}")
                size = len(self.vocabs[f.name]) + 1
            elif f.hash_buckets:
                lookup = keras.layers.Hashing(f.hash_buckets, name=f"hash_{f.name}")
                size = f.hash_buckets
            elif f.boundaries:
                lookup = keras.layers.Discretization(bin_boundaries=list(f.boundaries),
                                                     name=f"bucket_{f.name}")
                size = len(f.boundaries) + 1
            else:
                continue
            self.lookups[f.name] = lookup
            self.embeddings[f.name] = keras.layers.Embedding(
                size, f.dim, embeddings_initializer=keras.initializers.RandomNormal(stddev=0.05),
                name=f"emb_{f.name}")

    def ids(self, name: str, value: tf.Tensor) -> tf.Tensor:
        """Integer ids of one feature's raw values (0 is the out-of-vocabulary id)."""
        return self.lookups[name](value)

    def call(self, inputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
        return self.encode(inputs)[0]

    def preprocess(self, inputs: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """The part of encode that reads no weight, per feature: the ids of an embedded one
        (vocabulary, hash or bucket; for a list, ids [B, L] padded with 0 and, under
        `<name>/weights`, 1/length where an id is, 0 in the padding) or the normalised value
        [B, 1] of a plain number. Training runs it in the input pipeline, serving inside the
        model."""
        out = {}
        for f in self.features:
            value = inputs[f.name]
            if f.kind == "categorical_list":  # padded ids [B, L] and their mean's weights
                ids = self.ids(f.name, value)
                out[f.name] = ids.to_tensor(0)
                mask = tf.sequence_mask(ids.row_lengths(), tf.shape(out[f.name])[1], tf.float32)
                lengths = tf.cast(tf.maximum(ids.row_lengths(), 1), tf.float32)
                out[f.name + LIST_WEIGHTS] = mask / lengths[:, None]
            elif f.name in self.embeddings:
                out[f.name] = self.ids(f.name, value)
            else:
                out[f.name] = self._normalize(f, tf.cast(value, tf.float32))[:, None]
        return out

    def encode(self, inputs: Mapping[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor | None]:
        """(all features as one vector [B, F], domain-aware features' embeddings [B, E] or None)."""
        return self.encode_preprocessed(self.preprocess(inputs))

    def encode_preprocessed(self, ids: Mapping[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor | None]:
        """encode on the output of preprocess: embeddings looked up, lists averaged."""
        parts, domain_parts = [], []
        for f in self.features:
            value = ids[f.name]
            if f.name in self.embeddings:
                vectors = self.embeddings[f.name](value)
                if f.kind == "categorical_list":  # the mean of the row's embeddings (0 if none)
                    vectors = tf.reduce_sum(vectors * ids[f.name + LIST_WEIGHTS][..., None], axis=1)
                parts.append(vectors)
                if f.domain:
                    domain_parts.append(vectors)
            else:
                parts.append(value)
        domain = tf.concat(domain_parts, axis=-1) if domain_parts else None
        return tf.concat(parts, axis=-1), domain

    def domain_columns(self) -> list[int]:
        """The columns of encode's feature vector that hold its domain embedding, in order."""
        columns: list[int] = []
        start = 0
        for f in self.features:
            width = f.dim if f.name in self.embeddings else 1
            if f.domain and f.name in self.embeddings:
                columns.extend(range(start, start + width))
            start += width
        return columns

    def domain_tables(self) -> list[np.ndarray] | None:
        """The embedding tables of the domain-aware features, in domain_embedding's order, if
        each row's domain embedding is one row of each (None if a list feature is among them:
        its embedding is a mean of rows)."""
        domain = [f for f in self.features if f.domain and f.name in self.embeddings]
        if not domain or any(f.kind == "categorical_list" for f in domain):
            return None
        return [self.embeddings[f.name].embeddings.numpy() for f in domain]

    def domain_key(self, ids: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """[B]: each row's domain-aware feature ids (int64, as the lookups make them) as one
        index into the row-major product of their id spaces (the rows of domain_tables'
        combinations), from the output of preprocess."""
        key = None
        for f in self.features:
            if f.domain and f.name in self.embeddings:
                ids_f = tf.reshape(ids[f.name], [-1])
                key = ids_f if key is None else key * self.embeddings[f.name].input_dim + ids_f
        return key

    def _normalize(self, f: Feature, x: tf.Tensor) -> tf.Tensor:
        if f.normalize == "log":
            return tf.math.log1p(tf.maximum(x, 0.0))
        if f.normalize == "zscore":
            mean, std = self.numeric_stats[f.column]
            return (x - mean) / std
        return x


class TpmLookup(keras.layers.Layer):
    """Frozen TPM embedding tables keyed by raw entity id; unseen ids get a zero vector."""

    def __init__(self, tables: Mapping[str, tuple[Sequence[str], np.ndarray]], **kwargs):
        super().__init__(**kwargs)
        self.feature_names = sorted(tables)
        self.lookups = {}
        self.tables = {}
        for name in self.feature_names:
            keys, matrix = tables[name]
            self.lookups[name] = keras.layers.StringLookup(
                vocabulary=token_array(keys), num_oov_indices=1, name=f"tpm_lookup_{name}")
            padded = np.vstack([np.zeros((1, matrix.shape[1]), np.float32), matrix.astype(np.float32)])
            self.tables[name] = constant_weight(self, f"tpm_table_{name}", padded)

    def call(self, inputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
        return self.from_rows(self.rows(inputs))

    def rows(self, inputs: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Per feature, the table row of each raw id (0: unseen, the zero vector)."""
        return {n: self.lookups[n](inputs[n]) for n in self.feature_names}

    def from_rows(self, rows: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """call on the output of rows: the vectors, concatenated in feature-name order."""
        return tf.concat([tf.gather(self.tables[n], rows[n]) for n in self.feature_names], axis=-1)

    def known(self, inputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """[B, features] 1.0 where the id has a vector, 0.0 where it gets the zero vector."""
        return known_from_rows(self.rows(inputs), self.feature_names)


def known_from_rows(rows: Mapping[str, tf.Tensor], names: Sequence[str]) -> tf.Tensor:
    """[B, len(names)] 1.0 where a TPM row is a known id's (> 0), else 0.0."""
    return tf.stack([tf.cast(rows[n] > 0, tf.float32) for n in names], axis=-1)


def constant_weight(layer: keras.layers.Layer, name: str, value: np.ndarray) -> tf.Variable:
    """A non-trainable weight of layer holding value (a serving form's folded constant)."""
    return layer.add_weight(name=name, shape=value.shape, trainable=False,
                            initializer=keras.initializers.Constant(value))


def folded_dense_batchnorm(dense: keras.layers.Dense, norm: keras.layers.BatchNormalization,
                           scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(kernel, bias) of x -> norm(dense(scale x)) at inference as one affine map: the
    BatchNorm's moving statistics, scale and offset folded into the dense layer (equal up to
    float rounding)."""
    variance = norm.moving_variance.numpy()
    inverse = 1.0 / np.sqrt(variance + norm.epsilon)
    if norm.gamma is not None:
        inverse = inverse * norm.gamma.numpy()
    offset = norm.beta.numpy() if norm.beta is not None else 0.0
    kernel = scale * dense.kernel.numpy() * inverse
    bias = (dense.bias.numpy() - norm.moving_mean.numpy()) * inverse + offset
    return kernel.astype(np.float32), bias.astype(np.float32)
