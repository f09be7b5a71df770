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
                     domain: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """One domain's MLP with its factors folded in and its dead hidden neurons removed: per
    layer the kernel and bias on the kept neurons.

    tables, kernels, biases: AdaSparseServingMlp's factor tables (pi divided by the scale the
    kernels carry) and folded dense layers. The factors are >= 0, so relu(z) pi = relu(z pi):
    under placement "input" a layer's factors scale its kernel's rows, under "output" its
    kernel's columns and its bias (the last layer's also output_scale). A hidden neuron is
    dead when every weight reading it is zero, or when it always outputs 0 (a zero column and
    bias <= 0). The tower input keeps every column (a pruned one has zero rows in the first
    kernel: gathering the kept columns of a batch costs more than multiplying the zeros) and
    the last layer every output: the tower's output width is fixed."""
    folded = []
    for i, (kernel, bias) in enumerate(zip(kernels, biases, strict=True)):
        factors = tables[i][domain]
        if placement == "input":
            folded.append((kernel * factors[:, None], bias))
        else:
            scale = output_scale if i == len(kernels) - 1 else 1.0
            folded.append((kernel * (factors * scale)[None, :], bias * factors * scale))
    rows = np.arange(folded[0][0].shape[0])
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
    return out_kernels, out_biases


class CompactedAdaSparseMlp(Tower):
    """The serving form of an AdaSparse tower whose factors are tabulated per domain key
    (AdaSparseServingMlp with reads_domain_key): every domain's compacted MLP
    (compacted_layers) is computed at export and stored in one flat float buffer (kernels and
    biases), with per domain the begin and size of each piece and each kernel's shape. A
    batch whose rows share one domain key (a request usually has one scenario and few
    positions) runs that domain's MLP: per layer one matmul, bias and ReLU on the kept
    neurons only, with no factor gather or multiply. Any other batch (mixed domains, or
    empty) runs the tabulated form it was made from (`tables`). Equal to the tabulated form
    up to float rounding."""

    reads_domain_key = True

    def __init__(self, tables: Tower, pieces: list[tuple[list[np.ndarray], list[np.ndarray]]],
                 **kwargs):
        super().__init__(**kwargs)
        self.tables = tables
        self.output_width = int(pieces[0][0][-1].shape[1])
        floats, begins, sizes, shapes = [], [], [], []
        used = 0
        for kernels, biases in pieces:
            row_begins, row_sizes = [], []
            for kernel, bias in zip(kernels, biases, strict=True):
                for part in (kernel.ravel(), bias):
                    row_begins.append(used)
                    row_sizes.append(part.size)
                    floats.append(part.astype(np.float32))
                    used += part.size
            begins.append(row_begins)
            sizes.append(row_sizes)
            shapes.append([k.shape for k in kernels])
        self.pieces = len(begins[0])
        self.floats = constant_weight(self, "weights", np.concatenate(floats))
        self.begins = self.index_weight("begins", np.asarray(begins)[..., None])
        self.sizes = self.index_weight("sizes", np.asarray(sizes)[..., None])
        self.shapes = self.index_weight("shapes", np.asarray(shapes))

    def index_weight(self, name: str, value: np.ndarray) -> tf.Variable:
        """A non-trainable int32 weight holding value (begins, sizes, shapes)."""
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
        layers = self.pieces // 2
        shapes = tf.unstack(tf.gather(self.shapes, domain), num=layers)
        for i in range(layers):
            shape = [-1, self.output_width] if i == layers - 1 else shapes[i]
            kernel = tf.reshape(tf.slice(self.floats, begins[2 * i], sizes[2 * i]), shape)
            bias = tf.slice(self.floats, begins[2 * i + 1], sizes[2 * i + 1])
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
        size += 4 * sum(k.size + b.size for k, b in zip(*piece, strict=True))
        if size > MAX_COMPACT_BYTES:
            return serving
        pieces.append(piece)
    return CompactedAdaSparseMlp(serving, pieces, name=serving.name)
