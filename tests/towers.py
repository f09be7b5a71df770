"""The AdaSparse tests' training loop: a few SGD steps of a tower under a fixed head, so that
its pruners move and its factors differ by domain (shared by test_adasparse and
test_adasparse_compact)."""

from __future__ import annotations

import ecdctr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

# isort: split
import tensorflow as tf
import tf_keras as keras


def task_loss(tower, x: tf.Tensor, domain_embedding: tf.Tensor, labels: tf.Tensor, head: tf.Tensor,
              training: bool = True) -> tf.Tensor:
    """The sigmoid cross-entropy of tower(x) @ head against labels, plus the tower's own losses."""
    logits = tower(x, domain_embedding=domain_embedding, training=training) @ head
    loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels, logits))
    return loss + tf.add_n(tower.losses) if tower.losses else loss


def train_tower(tower, x: tf.Tensor, domain_embedding: tf.Tensor, labels: tf.Tensor,
                head: tf.Tensor, steps: int, learning_rate: float) -> None:
    """`steps` steps of plain SGD on task_loss."""
    optimizer = keras.optimizers.SGD(learning_rate)
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = task_loss(tower, x, domain_embedding, labels, head)
        optimizer.apply_gradients(zip(tape.gradient(loss, tower.trainable_variables),
                                      tower.trainable_variables, strict=True))
