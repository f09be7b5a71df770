"""The plain MLP tower (no domains) and its serving form with BatchNorm folded into the dense layers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from ecdctr.layers.core import constant_weight, folded_dense_batchnorm
from ecdctr.models.tower import Tower


class Mlp(Tower):
    """Dense -> BatchNorm -> ReLU blocks (`dense_<i>`, `bn_<i>`); the domain inputs are ignored."""

    def __init__(self, hidden: Sequence[int], dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.dense = [keras.layers.Dense(u, name=f"dense_{i}") for i, u in enumerate(hidden)]
        self.norms = [keras.layers.BatchNormalization(name=f"bn_{i}") for i in range(len(hidden))]
        self.dropout = keras.layers.Dropout(dropout) if dropout else None

    def call(self, x: tf.Tensor, domain_embedding: tf.Tensor | None = None,
             domain_index: tf.Tensor | None = None, training: bool | None = None) -> tf.Tensor:
        for dense, norm in zip(self.dense, self.norms, strict=True):
            x = tf.nn.relu(norm(dense(x), training=training))
            if self.dropout is not None:
                x = self.dropout(x, training=training)
        return x

    def for_serving(self, domain_columns: Sequence[int] = (),
                    domain_tables: Sequence[np.ndarray] | None = None) -> FoldedMlp:
        """This tower at inference with each BatchNorm folded into its dense layer
        (FoldedMlp), the form exports serve; the tower itself is left as it is. The domain
        arguments of Tower.for_serving are ignored."""
        if not all(d.built for d in self.dense):
            raise ValueError("for_serving needs a built Mlp: call it on a batch first")
        return FoldedMlp([folded_dense_batchnorm(d, n) for d, n in zip(self.dense, self.norms,
                                                                         strict=True)],
                         name=self.name)


class FoldedMlp(Tower):
    """Mlp's inference forward with each BatchNorm folded into its dense layer: relu(x K + b)
    per layer, one fused matmul, bias and ReLU on CPU (Mlp.for_serving; models.ctr_model's
    serving_form swaps it in for exports). Inference only: `training` is ignored."""

    def __init__(self, affine: Sequence[tuple[np.ndarray, np.ndarray]], **kwargs):
        super().__init__(**kwargs)
        self.kernels = [constant_weight(self, f"dense_{i}_kernel", k)
                        for i, (k, _) in enumerate(affine)]
        self.biases = [constant_weight(self, f"dense_{i}_bias", b) for i, (_, b) in enumerate(affine)]

    def call(self, x: tf.Tensor, domain_embedding: tf.Tensor | None = None,
             domain_index: tf.Tensor | None = None, training: bool | None = None) -> tf.Tensor:
        for kernel, bias in zip(self.kernels, self.biases, strict=True):
            x = tf.nn.relu(tf.nn.bias_add(tf.matmul(x, kernel), bias))
        return x
