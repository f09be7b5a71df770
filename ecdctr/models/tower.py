"""The tower contract: the base class of the MLP towers (plain, AdaSparse, STAR, APG) and of
the forms they serve in, which CtrModel and the export rely on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import tensorflow as tf
import tf_keras as keras


class Tower(keras.layers.Layer):
    """An MLP tower of CtrModel: `call(x [B, F], domain_embedding [B, E], domain_index int32 [B],
    training) -> [B, hidden[-1]]`, with sublayers named `dense_<i>` and `bn_<i>` so that
    weights transfer by name between towers of one kind. A tower reads the domain inputs it
    needs and ignores the others (the plain MLP reads neither).

    The defaults below suit a tower that has none of the optional parts; a subclass overrides
    what it has.
    """

    # The model passes domain_index as each row's domain key (FeatureEncoder.domain_key)
    # instead of its domain index: a serving form with per-domain tables sets it.
    reads_domain_key: bool = False
    # A tf.sparse inference path switched by the `sparse_inference` attribute (read when the
    # call is traced); exports time it against the dense path and keep the faster.
    has_sparse_path: ClassVar[bool] = False

    def call(self, x: tf.Tensor, domain_embedding: tf.Tensor | None = None,
             domain_index: tf.Tensor | None = None, training: bool | None = None) -> tf.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not define its forward pass")

    def extra_logit(self, x: tf.Tensor, domain_embedding: tf.Tensor | None,
                    domain_index: tf.Tensor | None, training: bool | None = None
                    ) -> tf.Tensor | None:
        """A term [B, 1] the model adds to its logit (STAR's auxiliary network), or None."""
        return None

    def plan_schedule(self, steps_per_epoch: int) -> None:
        """Tells the tower's schedules (AdaSparse's alpha and regularizer ramp) how many steps
        an epoch of the coming fit has; a tower without schedules ignores it."""

    def for_serving(self, domain_columns: Sequence[int] = (),
                    domain_tables: Sequence[np.ndarray] | None = None) -> Tower:
        """The tower in the form exports serve, computing the same function at inference
        (constants folded, factors multiplied out); the tower itself is left as it is. Here:
        the tower itself, whose training form is its serving form (as is a serving form's).
        domain_columns: the columns of the tower input that hold the domain embedding (empty
        if it does not hold it); domain_tables: the embedding tables whose rows the domain
        embedding concatenates (FeatureEncoder.domain_tables), or None."""
        return self
