"""AdaSparse's compacted serving form: with per-domain factors, each domain's MLP with its pruned
neurons removed and its factors folded into the weights, so a pruned neuron costs nothing."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from ecdctr.layers.core import constant_weight
from ecdctr.models.tower import Tower

MAX_COMPACT_BYTES = 64 << 20  # the most bytes the per-domain weights may take in the SavedModel


def compacted_layers(tables: Sequence[np.ndarray], kernels: Sequence[np.ndarray],
                     biases: Sequence[np.ndarray], placement: str, output_scale: float,
                     domain: int) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """One domain's MLP with its factors folded in and its dead neurons removed: (the kept
    columns of the tower input, per layer the kernel and bias on the kept neurons).

    tables, kernels, biases: AdaSparseServingMlp's factor tables (pi divided by the scale the
    kernels carry) and folded dense layers. The factors are >= 0, so relu(z) pi = relu(z pi):
    under placement "input" a layer's factors scale its kernel's rows, under "output" its
    kernel's columns and its bias (the last layer's also output_scale). A hidden neuron is
    dead when every weight reading it is zero, or when it always outputs 0 (a zero column and
    bias <= 0); a tower input column is dropped when every weight reading it is zero. The
    last layer keeps every column: the tower's output width is fixed."""
    folded = []
    for i, (kernel, bias) in enumerate(zip(kernels, biases, strict=True)):
        factors = tables[i][domain]
        if placement == "input":
            folded.append((kernel * factors[:, None], bias))
        else:
            scale = output_scale if i == len(kernels) - 1 else 1.0
            folded.append((kernel * (factors * scale)[None, :], bias * factors * scale))
    inputs = rows = np.flatnonzero(np.any(folded[0][0] != 0, axis=1))
    out_kernels, out_biases = [], []
    for i, (kernel, bias) in enumerate(folded):
        if i == len(folded) - 1:
            columns = np.arange(kernel.shape[1])
        else:
            silent = ~np.any(kernel != 0, axis=0) & (bias <= 0)
            columns = np.flatnonzero(np.any(folded[i + 1][0] != 0, axis=1) & ~silent)
        out_kernels.append(kernel[rows][:, columns])
        out_biases.append(bias[columns])
        rows = columns
    return inputs, out_kernels, out_biases


class CompactedAdaSparseMlp(Tower):
    """The serving form of an AdaSparse tower whose factors are tabulated per domain key
    (AdaSparseServingMlp with reads_domain_key): every domain's compacted MLP
    (compacted_layers) is computed at export and stored in one flat float buffer (kernels and
    biases) and one int buffer (kept tower input columns), with per domain the begin and size
    of each piece. A batch whose rows share one domain key (a request usually has one
    scenario and few positions) runs that domain's MLP: the kept input columns gathered, then
    per layer one matmul, bias and ReLU on the kept neurons only, with no factor gather or
    multiply. Any other batch (mixed domains, or empty) runs the tabulated form it was made
    from (`tables`). Equal to the tabulated form up to float rounding."""

    reads_domain_key = True

    def __init__(self, tables: Tower, pieces: list[tuple[np.ndarray, list[np.ndarray],
                                                         list[np.ndarray]]], **kwargs):
        super().__init__(**kwargs)
        self.tables = tables
        self.output_width = int(pieces[0][1][-1].shape[1])
        floats, columns, begins, sizes, shapes = [], [], [], [], []
        used = [0, 0]  # floats, ints
        for inputs, kernels, biases in pieces:
            row_begins, row_sizes = [used[1]], [len(inputs)]
            columns.append(inputs.astype(np.int32))
            used[1] += len(inputs)
            for kernel, bias in zip(kernels, biases, strict=True):
                for part in (kernel.ravel(), bias):
                    row_begins.append(used[0])
                    row_sizes.append(part.size)
                    floats.append(part.astype(np.float32))
                    used[0] += part.size
            begins.append(row_begins)
            sizes.append(row_sizes)
            shapes.append([k.shape for k in kernels])
        self.pieces = len(begins[0])
        self.floats = constant_weight(self, "weights", np.concatenate(floats))
        self.columns = self.index_weight("columns", np.concatenate([*columns, [0]]))
        self.begins = self.index_weight("begins", np.asarray(begins)[..., None])
        self.sizes = self.index_weight("sizes", np.asarray(sizes)[..., None])
        self.shapes = self.index_weight("shapes", np.asarray(shapes))

    def index_weight(self, name: str, value: np.ndarray) -> tf.Variable:
        """A non-trainable int32 weight holding value (offsets, sizes, kept columns)."""
        return self.add_weight(name=name, shape=value.shape, dtype=tf.int32, trainable=False,
                               initializer=keras.initializers.Constant(value.astype(np.int32)))

    def call(self, x: tf.Tensor, domain_embedding: tf.Tensor | None = None,
             domain_index: tf.Tensor | None = None, training: bool | None = None) -> tf.Tensor:
        if domain_index is None:
            raise ValueError("CompactedAdaSparseMlp reads each row's domain key: pass "
                             "domain_index [B] (FeatureEncoder.domain_key)")
        low, high = tf.reduce_min(domain_index), tf.reduce_max(domain_index)
        return tf.cond(tf.equal(low, high), lambda: self.one_domain(x, low),
                       lambda: self.tables(x, domain_embedding=domain_embedding,
                                           domain_index=domain_index))

    def one_domain(self, x: tf.Tensor, domain: tf.Tensor) -> tf.Tensor:
        """Every row of x through the compacted MLP of this one domain key."""
        begins = tf.unstack(tf.gather(self.begins, domain), num=self.pieces)
        sizes = tf.unstack(tf.gather(self.sizes, domain), num=self.pieces)
        layers = (self.pieces - 1) // 2
        shapes = tf.unstack(tf.gather(self.shapes, domain), num=layers)
        x = tf.gather(x, tf.slice(self.columns, begins[0], sizes[0]), axis=1)
        for i in range(layers):
            shape = [-1, self.output_width] if i == layers - 1 else shapes[i]
            kernel = tf.reshape(tf.slice(self.floats, begins[1 + 2 * i], sizes[1 + 2 * i]), shape)
            bias = tf.slice(self.floats, begins[2 + 2 * i], sizes[2 + 2 * i])
            x = tf.nn.relu(tf.nn.bias_add(tf.matmul(x, kernel), bias))
        return x


def compacted(serving: Tower) -> Tower:
    """The compacted form (CompactedAdaSparseMlp) of a tabulated AdaSparseServingMlp, or the
    tabulated form itself when it does not tabulate (reads_domain_key false) or the per-domain
    weights would take more than MAX_COMPACT_BYTES."""
    if not serving.reads_domain_key:
        return serving
    tables = [t.numpy() for t in serving.factor_tables]
    kernels = [k.numpy() for k in serving.kernels]
    biases = [b.numpy() for b in serving.biases]
    pieces, size = [], 0
    for domain in range(len(tables[0])):
        piece = compacted_layers(tables, kernels, biases, serving.config.placement,
                                 serving.output_scale, domain)
        size += 4 * (piece[0].size + sum(k.size + b.size for k, b in zip(*piece[1:], strict=True)))
        if size > MAX_COMPACT_BYTES:
            return serving
        pieces.append(piece)
    return CompactedAdaSparseMlp(serving, pieces, name=serving.name)
