"""The export form of a trained AdaSparse tower: its inference forward with constants folded."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from ecdctr.layers.core import constant_weight, folded_dense_batchnorm
from ecdctr.models.adasparse import (
    AdaSparseMlp,
    sparse_input_affine,
)
from ecdctr.models.adasparse_compact import compacted
from ecdctr.models.tower import Tower

MAX_FACTOR_ROWS = 1 << 16  # the most domain combinations whose factors an export tabulates
MAX_FACTOR_BYTES = 64 << 20  # and the most bytes its factor tables may take in the SavedModel


class AdaSparseServingMlp(Tower):
    """The inference forward of a trained AdaSparseMlp with its constants folded at export
    (AdaSparseMlp.for_serving; models.ctr_model's serving_form swaps it in for exports). Inference only:
    `training` is ignored (SavedModel tracing passes both values), so it never trains.

    It computes what the tower computes at inference, up to float rounding (a pruner logit
    within rounding of its threshold may flip its factor), in fewer passes over the batch:
    - alpha is folded into the pruner weights, so s = sigmoid(alpha v) is one matmul with its
      bias and sigmoid, which the CPU kernels run as one fused op;
    - given domain_columns (where the tower input x_0 holds e_d), pruner_0's rows for e_d are
      added to those columns' rows: it reads x_0 alone, with no [e_d ; x_0] concat;
    - factor and product are one select, x pi / beta = where(s > epsilon / beta, x s, 0)
      (binarization: where(s > epsilon, x, 0); scaling: x s), without the straight-through
      terms and zero shares that only training needs;
    - beta, the factors' scale under fusion and scaling, is folded into the weights that read
      the pruned values (the next dense kernel; under placement "output" also the next pruner,
      and a last multiply after the last layer);
    - each BatchNorm is folded into its dense layer (layers.folded_dense_batchnorm), so a
      layer is one fused matmul, bias and ReLU;
    - pruners reading e_d alone (config.pruner_input "domain", domain_only): all their factors
      come from one matmul e_d [K_0 ... K_L] with its bias and sigmoid and one select
      (binarization: a compare), split per layer; pruning a layer is then one multiply.
      Given domain_tables (the embedding tables e_d concatenates one row of each) with at
      most MAX_FACTOR_ROWS combinations (and tables of at most MAX_FACTOR_BYTES), the
      factors of every combination are computed here and a row's are gathered by its domain
      key (domain_index: the row-major index of its ids in the tables,
      FeatureEncoder.domain_key; reads_domain_key tells the model to pass it), one table per
      layer: no matmul, sigmoid, select or split per request.
    sparse_inference (the tf.sparse path of the layers whose input carries pruned zeros) works
    as in AdaSparseMlp.
    """

    has_sparse_path = True

    def __init__(self, tower: AdaSparseMlp, domain_columns: Sequence[int] = (),
                 domain_tables: Sequence[np.ndarray] | None = None, **kwargs):
        super().__init__(**kwargs)
        c = tower.config
        self.config = c
        self.sparse_inference = tower.sparse_inference
        alpha = 1.0 if c.form == "scaling" else float(tower.alpha.numpy())
        left_out = 1.0 if c.form == "binarization" else c.beta  # x pi = left_out * _prune(x, s)
        carry = 1.0  # the scale the layer input computed here lacks (placement "output")
        self.domain_only = c.pruner_input == "domain"
        self.first_reads_input_only = bool(domain_columns) and not self.domain_only
        pruner_kernels, pruner_biases, self.kernels, self.biases = [], [], [], []
        for i, (dense, norm, pruner) in enumerate(zip(tower.dense, tower.norms, tower.pruners,
                                                      strict=True)):
            kernel = alpha * pruner.dense.kernel.numpy()  # rows: [e_d ; x_l] (domain_only: e_d)
            split = kernel.shape[0] - (0 if self.domain_only else dense.kernel.shape[0])
            kernel[split:] *= carry
            if i == 0 and self.first_reads_input_only:
                if len(domain_columns) != split:
                    raise ValueError(f"domain_columns: {len(domain_columns)} columns for a "
                                     f"domain embedding of width {split}")
                np.add.at(kernel, split + np.asarray(domain_columns), kernel[:split])
                kernel = kernel[split:]
            pruner_kernels.append(kernel)
            pruner_biases.append(alpha * (pruner.dense.bias.numpy()
                                          - float(tower.pruner_shift[i])))  # the controller's
            scale = left_out if c.placement == "input" else carry
            kernel, bias = folded_dense_batchnorm(dense, norm, scale)
            self.kernels.append(constant_weight(self, f"dense_{i}_kernel", kernel))
            self.biases.append(constant_weight(self, f"dense_{i}_bias", bias))
            if c.placement == "output":
                carry = left_out
        self.output_scale = carry
        rows = math.prod(len(t) for t in domain_tables) if domain_tables else 0
        table_bytes = rows * sum(int(k.shape[1]) for k in pruner_kernels) * 4  # float32
        self.reads_domain_key = (self.domain_only and 0 < rows <= MAX_FACTOR_ROWS
                                 and table_bytes <= MAX_FACTOR_BYTES)
        self.factor_tables = []
        if self.reads_domain_key:  # every combination's factors, one table per layer
            combos = np.stack(np.meshgrid(*(np.arange(len(t)) for t in domain_tables),
                                          indexing="ij"), axis=-1).reshape(rows, -1)
            e_d = np.concatenate([t[combos[:, j]] for j, t in enumerate(domain_tables)], axis=1)
            for i, (kernel, bias) in enumerate(zip(pruner_kernels, pruner_biases, strict=True)):
                s = tf.sigmoid(tf.nn.bias_add(tf.matmul(e_d, kernel), bias))
                self.factor_tables.append(constant_weight(self, f"pruner_{i}_factors",
                                                          self._factors(s).numpy()))
            return
        if self.domain_only:  # every pruner reads e_d alone: one matmul for all, split per layer
            self.factor_widths = [k.shape[1] for k in pruner_kernels]
            pruner_kernels = {"pruners": np.concatenate(pruner_kernels, axis=1)}
            pruner_biases = {"pruners": np.concatenate(pruner_biases)}
        else:
            pruner_kernels = {f"pruner_{i}": k for i, k in enumerate(pruner_kernels)}
            pruner_biases = {f"pruner_{i}": b for i, b in enumerate(pruner_biases)}
        self.pruner_kernels = [constant_weight(self, f"{n}_kernel", k) for n, k in pruner_kernels.items()]
        self.pruner_biases = [constant_weight(self, f"{n}_bias", b) for n, b in pruner_biases.items()]

    def call(self, x: tf.Tensor, domain_embedding: tf.Tensor | None = None,
             domain_index: tf.Tensor | None = None, training: bool | None = None) -> tf.Tensor:
        if domain_embedding is None:
            raise ValueError("AdaSparseServingMlp prunes per domain: pass domain_embedding [B, E]")
        prune_input = self.config.placement == "input"
        if self.reads_domain_key:
            if domain_index is None:
                raise ValueError("AdaSparseServingMlp with factor tables reads each row's "
                                 "domain key: pass domain_index [B] (FeatureEncoder.domain_key)")
            factors = [tf.gather(table, domain_index) for table in self.factor_tables]
        elif self.domain_only:
            factors = tf.split(self._factors(self._sigmoid(domain_embedding, 0)),
                               self.factor_widths, axis=-1)
        for i, (kernel, bias) in enumerate(zip(self.kernels, self.biases, strict=True)):
            if self.domain_only:
                prune = functools.partial(tf.multiply, factors[i])
            else:
                reads = (x if i == 0 and self.first_reads_input_only
                         else tf.concat([domain_embedding, x], axis=-1))
                prune = functools.partial(self._prune, s=self._sigmoid(reads, i))
            if prune_input:
                x = prune(x)
            z = (sparse_input_affine(x, kernel, bias)
                 if self.sparse_inference and (prune_input or i > 0)
                 else tf.nn.bias_add(tf.matmul(x, kernel), bias))
            x = tf.nn.relu(z)
            if not prune_input:
                x = prune(x)
        return x * self.output_scale if self.output_scale != 1.0 else x

    def _sigmoid(self, reads: tf.Tensor, i: int) -> tf.Tensor:
        """s = sigmoid(alpha v) of pruner i (domain_only: of all pruners) on what it reads."""
        return tf.sigmoid(tf.nn.bias_add(tf.matmul(reads, self.pruner_kernels[i]),
                                         self.pruner_biases[i]))

    def _factors(self, s: tf.Tensor) -> tf.Tensor:
        """pi divided by the factors' scale (beta; binarization: 1), from s = sigmoid(alpha v)."""
        c = self.config
        if c.form == "scaling":
            return s
        if c.form == "binarization":
            return tf.cast(s > c.epsilon, s.dtype)
        return tf.where(s > c.epsilon / c.beta, s, 0.0)

    def _prune(self, x: tf.Tensor, s: tf.Tensor) -> tf.Tensor:
        """x pi divided by the factors' scale (beta; binarization: 1), from s = sigmoid(alpha v)."""
        c = self.config
        if c.form == "scaling":
            return x * s
        if c.form == "binarization":
            return tf.where(s > c.epsilon, x, 0.0)
        return tf.where(s > c.epsilon / c.beta, x * s, 0.0)


def serving_tower(tower: AdaSparseMlp, domain_columns: Sequence[int] = (),
                  domain_tables: Sequence[np.ndarray] | None = None) -> Tower:
    """AdaSparseMlp.for_serving: the folded form, compacted per domain when the tower's
    export_form says so (adasparse_compact.compacted)."""
    serving = AdaSparseServingMlp(tower, domain_columns, domain_tables, name=tower.name)
    return compacted(serving) if tower.config.export_form == "compacted" else serving
