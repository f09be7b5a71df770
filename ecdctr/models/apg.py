"""APG (NeurIPS 2022): an MLP tower whose layer weights a hypernetwork generates from the domain."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from ecdctr.models.tower import Tower

OVER_WIDTH_FACTOR = 4  # over-parameterised U = U_l [N, P] U_r [P, K] with P = 4 K; V likewise


def distinct_conditions(domain_embedding: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The distinct rows of domain_embedding [U, E] and each row's position among them [B].

    Rows are compared by value, not by domain index: the out-of-vocabulary domain 0 groups
    unseen combinations whose embeddings differ, and each must get its own weights. Where the
    embedding is a function of the domain, this is one row per domain present in the batch.
    The distinct rows are gathered from domain_embedding, so gradients reach the embeddings.
    """
    distinct, position = tf.raw_ops.UniqueV2(x=tf.stop_gradient(domain_embedding),
                                             axis=tf.constant([0], tf.int64), out_idx=tf.int32)
    first_row = tf.math.unsorted_segment_min(tf.range(tf.shape(position)[0]), position,
                                             tf.shape(distinct)[0])
    return tf.gather(domain_embedding, first_row), position


class ApgDense(keras.layers.Layer):
    """One APG layer: y = x U S(e) V + b(e) with shared U [N, K], V [K, M] and S = reshape(G(e))
    [K, K], b(e) generated from the row's domain embedding e.

    S starts near the identity (G's bias is the flattened identity). With over_parameterize,
    U = U_l U_r and V = V_l V_r (width P = OVER_WIDTH_FACTOR * K); `factors()` multiplies
    them out, so an export can hold plain U and V.

    Call: `layer(x [B, N], conditions [U, E] (distinct domain embeddings), position [B] (each
    row's position in conditions))` -> [B, M]. G runs once per distinct condition; each row
    then costs O(N K + K^2 + K M).
    """

    def __init__(self, units: int, rank: int, over_parameterize: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.rank = int(rank)
        self.over_parameterize = bool(over_parameterize)
        self.s_generator = keras.layers.Dense(
            self.rank * self.rank, name="s_generator",
            bias_initializer=keras.initializers.Constant(np.eye(self.rank).ravel()))
        self.bias_generator = keras.layers.Dense(self.units, name="bias_generator")

    def build(self, input_shape: tf.TensorShape) -> None:
        fan_in, rank = int(input_shape[-1]), self.rank
        if self.over_parameterize:
            width = OVER_WIDTH_FACTOR * rank
            self.u_left = self.add_weight(name="u_left", shape=(fan_in, width))
            self.u_right = self.add_weight(name="u_right", shape=(width, rank))
            self.v_left = self.add_weight(name="v_left", shape=(rank, width))
            self.v_right = self.add_weight(name="v_right", shape=(width, self.units))
        else:
            self.u = self.add_weight(name="u", shape=(fan_in, rank))
            self.v = self.add_weight(name="v", shape=(rank, self.units))
        super().build(input_shape)

    def factors(self) -> tuple[tf.Tensor, tf.Tensor]:
        """The shared U [N, K] and V [K, M] (products of their factors when over-parameterised)."""
        if self.over_parameterize:
            return tf.matmul(self.u_left, self.u_right), tf.matmul(self.v_left, self.v_right)
        return tf.convert_to_tensor(self.u), tf.convert_to_tensor(self.v)

    def call(self, x: tf.Tensor, conditions: tf.Tensor, position: tf.Tensor) -> tf.Tensor:
        u, v = self.factors()
        s = tf.reshape(self.s_generator(conditions), [-1, self.rank, self.rank])  # [U, K, K]
        bias = self.bias_generator(conditions)  # [U, M]
        mixed = tf.einsum("bk,bkj->bj", tf.matmul(x, u), tf.gather(s, position))
        return tf.matmul(mixed, v) + tf.gather(bias, position)


class ApgMlp(Tower):
    """APG tower: ApgDense -> BatchNorm -> ReLU blocks (`dense_<i>`, `bn_<i>`).

    domain_embedding is required and conditions the weights, domain_index is not needed (rows
    are grouped by their embedding). The parameter count depends on the domain embedding size,
    never on the number of domains.

    Its serving form (for_serving, merged_for_export) is the same function with U and V
    multiplied out when the tower is over-parameterised.
    """

    def __init__(self, hidden: Sequence[int], rank: int = 16, dropout: float = 0.0,
                 over_parameterize: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.hidden = tuple(int(u) for u in hidden)
        self.rank = int(rank)
        self.dropout_rate = float(dropout)
        self.over_parameterize = bool(over_parameterize)
        self.dense = [ApgDense(u, self.rank, self.over_parameterize, name=f"dense_{i}")
                      for i, u in enumerate(self.hidden)]
        self.norms = [keras.layers.BatchNormalization(name=f"bn_{i}") for i in range(len(self.hidden))]
        self.dropout = keras.layers.Dropout(dropout) if dropout else None

    def call(self, x: tf.Tensor, domain_embedding: tf.Tensor | None = None,
             domain_index: tf.Tensor | None = None, training: bool | None = None) -> tf.Tensor:
        if domain_embedding is None:
            raise ValueError("ApgMlp needs domain_embedding: it generates each row's weights from it")
        conditions, position = distinct_conditions(domain_embedding)
        for dense, norm in zip(self.dense, self.norms, strict=True):
            x = tf.nn.relu(norm(dense(x, conditions, position), training=training))
            if self.dropout is not None:
                x = self.dropout(x, training=training)
        return x

    def for_serving(self, domain_columns: Sequence[int] = (),
                    domain_tables: Sequence[np.ndarray] | None = None) -> ApgMlp:
        """merged_for_export; the domain arguments of Tower.for_serving are ignored."""
        return self.merged_for_export()

    def merged_for_export(self) -> ApgMlp:
        """This tower with every U = U_l U_r and V = V_l V_r multiplied out: a plain ApgMlp of the
        same name computing the same function. Returns self when not over-parameterised."""
        if not self.over_parameterize:
            return self
        if not self.built:
            raise ValueError("merged_for_export needs a built ApgMlp: call it on a batch first")
        merged = ApgMlp(self.hidden, self.rank, self.dropout_rate, over_parameterize=False,
                        name=self.name)
        first = self.dense[0]
        merged(tf.zeros([1, first.u_left.shape[0]]), tf.zeros([1, first.s_generator.kernel.shape[0]]),
               training=False)
        for source, target in zip(self.dense, merged.dense, strict=True):
            u, v = source.factors()
            target.u.assign(u)
            target.v.assign(v)
            target.s_generator.set_weights(source.s_generator.get_weights())
            target.bias_generator.set_weights(source.bias_generator.get_weights())
        for source, target in zip(self.norms, merged.norms, strict=True):
            target.set_weights(source.get_weights())
        return merged
