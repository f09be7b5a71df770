"""Tests for the STAR tower: routing by domain, Partitioned Normalization, auxiliary logit."""

import ecdctr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

# isort: split
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from ecdctr.models.mlp import Mlp
from ecdctr.models.star import PartitionedNormalization, StarMlp, block_diagonal_matmul
from ecdctr.seeding import set_random_seed

RNG = np.random.default_rng(0)
DOMAINS = 5
X = tf.constant(RNG.normal(size=(48, 6)).astype("float32"))
E = tf.constant(RNG.normal(size=(48, 3)).astype("float32"))
INDEX = tf.constant(np.arange(48) % 4, tf.int32)  # domains 0..3 of 5 present


@pytest.fixture(autouse=True)
def _seed():
    set_random_seed(0)


def _trained_tower(hidden=(8, 4), num_domains=DOMAINS) -> StarMlp:
    """A tower whose per-domain weights and statistics differ from their initial values."""
    tower = StarMlp(hidden, num_domains)
    tower(X, E, INDEX, training=True)
    for var in tower.trainable_variables:
        var.assign(var + RNG.normal(scale=0.3, size=var.shape).astype("float32"))
    return tower


def test_block_diagonal_matmul_and_its_gradient_match_a_per_row_product():
    x = tf.Variable(RNG.normal(size=(9, 4)).astype("float32"))
    kernels = tf.Variable(RNG.normal(size=(3, 4, 2)).astype("float32"))
    slot = tf.constant([2, 0, 0, 1, 2, 2, 1, 0, 2], tf.int32)
    head = tf.constant(RNG.normal(size=(9, 2)).astype("float32"))
    results = []
    for product in (lambda: block_diagonal_matmul(x, kernels, slot),
                    lambda: tf.einsum("bn,bnm->bm", x, tf.gather(kernels, slot))):
        with tf.GradientTape() as tape:
            y = product()
            loss = tf.reduce_sum(y * head)
        results.append([y, *tape.gradient(loss, [x, kernels])])
    for got, want in zip(*results, strict=True):
        np.testing.assert_allclose(tf.convert_to_tensor(got).numpy(),
                                   tf.convert_to_tensor(want).numpy(), atol=1e-5)


def test_rows_of_a_domain_do_not_depend_on_other_rows_of_the_batch():
    tower = _trained_tower()
    mixed = tower(X, E, INDEX, training=False).numpy()
    for domain in range(4):
        rows = np.flatnonzero(INDEX.numpy() == domain)
        alone = tower(tf.gather(X, rows), tf.gather(E, rows), tf.gather(INDEX, rows), training=False)
        np.testing.assert_allclose(alone.numpy(), mixed[rows], atol=1e-5)
    order = RNG.permutation(48)
    shuffled = tower(tf.gather(X, order), tf.gather(E, order), tf.gather(INDEX, order), training=False)
    np.testing.assert_allclose(shuffled.numpy(), mixed[order], atol=1e-5)


def test_domains_get_their_own_weights():
    tower = _trained_tower()
    same_x = tf.repeat(X[:1], 4, axis=0)
    out = tower(same_x, tf.repeat(E[:1], 4, axis=0), tf.range(4), training=False).numpy()
    assert min(np.abs(out[i] - out[j]).max() for i in range(4) for j in range(i)) > 1e-4


def test_at_initialization_the_tower_is_the_shared_mlp_on_the_normalized_input():
    tower = StarMlp((8, 4), DOMAINS)
    tower(X, E, INDEX, training=True)  # moves PN and BatchNorm statistics
    plain = Mlp((8, 4))
    normalized = tower.input_norm(X, INDEX, training=False)
    plain(normalized, training=False)
    for star_dense, dense in zip(tower.dense, plain.dense, strict=True):
        dense.set_weights([star_dense.kernel.numpy(), star_dense.bias.numpy()])
    for star_norm, norm in zip(tower.norms, plain.norms, strict=True):
        norm.set_weights(star_norm.get_weights())
    np.testing.assert_allclose(tower(X, E, INDEX, training=False).numpy(),
                               plain(normalized, training=False).numpy(), atol=1e-5)


def test_partitioned_normalization_uses_each_domains_batch_statistics():
    norm = PartitionedNormalization(DOMAINS)
    out = norm(X * 3.0 + 1.0, INDEX, training=True).numpy()
    for domain in range(4):
        rows = out[INDEX.numpy() == domain]
        np.testing.assert_allclose(rows.mean(axis=0), 0.0, atol=1e-5)
        np.testing.assert_allclose(rows.std(axis=0), 1.0, atol=1e-3)


def test_partitioned_normalization_moves_statistics_of_present_domains_only():
    norm = PartitionedNormalization(DOMAINS)
    norm(X, INDEX, training=False)
    before = (norm.moving_mean.numpy(), norm.moving_variance.numpy())
    present = np.isin(INDEX.numpy(), [1, 3])
    norm(tf.boolean_mask(X, present), tf.boolean_mask(INDEX, present), training=True)
    for old, new in zip(before, (norm.moving_mean.numpy(), norm.moving_variance.numpy()), strict=True):
        changed = np.abs(new - old).max(axis=1) > 0
        assert changed.tolist() == [False, True, False, True, False]
    # a domain's first batch sets its statistics, so inference reproduces the batch normalization
    rows = INDEX.numpy() == 1
    np.testing.assert_allclose(norm(X[rows], INDEX[rows], training=False).numpy(),
                               norm(X[rows], INDEX[rows], training=True).numpy(), atol=1e-3)


def test_unseen_domain_is_normalized_with_shared_statistics():
    norm = PartitionedNormalization(DOMAINS)
    norm(X * 3.0 + 1.0, INDEX, training=True)
    out = norm(X * 3.0 + 1.0, tf.fill([48], 4), training=False).numpy()  # domain 4: never trained
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-4)


def test_gradients_reach_shared_and_domain_weights_and_the_input():
    tower = StarMlp((8, 4), DOMAINS)
    x = tf.Variable(X)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(tower(x, E, INDEX, training=True) - 1.0))
        loss += tf.reduce_sum(tower.extra_logit(x, E, INDEX, training=True))
    watched = [x, tower.dense[0].kernel, tower.dense[0].domain_kernel, tower.dense[1].domain_bias,
               tower.input_norm.domain_gamma, tower.aux_hidden.kernel]
    grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, watched)]
    for var, grad in zip(watched, grads, strict=True):
        assert float(tf.reduce_max(tf.abs(grad))) > 0, var.name
    assert float(tf.reduce_max(tf.abs(grads[2][4]))) == 0  # domain 4 is absent from the batch


def test_parameter_count_grows_linearly_with_domains():
    def count(num_domains):
        tower = StarMlp((8, 4), num_domains)
        tower(X, E, INDEX, training=False)
        tower.extra_logit(X, E, INDEX)
        return tower.count_params()
    per_domain = (6 + 6) + (6 * 8 + 8) + (8 * 4 + 4) + (6 + 6 + 1)  # PN affine, W_p, b_p, PN stats
    assert count(7) - count(5) == count(9) - count(7) == 2 * per_domain


def test_extra_logit_is_one_unbounded_value_per_row():
    tower = StarMlp((8, 4), DOMAINS)
    logit = tower.extra_logit(X * 100.0, E, INDEX)
    assert logit.shape == (48, 1)
    assert float(tf.reduce_max(tf.abs(logit))) > 1.0  # no sigmoid/tanh on the logit


def test_training_step_in_a_compiled_function():
    tower = StarMlp((8, 4), DOMAINS, dropout=0.1)
    optimizer = keras.optimizers.Adam(0.01)

    @tf.function
    def step(x, e, index):
        with tf.GradientTape() as tape:
            logit = tf.reduce_sum(tower(x, e, index, training=True), axis=1, keepdims=True)
            loss = tf.reduce_mean(tf.square(logit + tower.extra_logit(x, e, index) - 1.0))
        grads = tape.gradient(loss, tower.trainable_variables)
        optimizer.apply_gradients(zip(grads, tower.trainable_variables, strict=True))
        return loss

    losses = [float(step(X, E, INDEX)) for _ in range(30)]
    assert losses[-1] < losses[0]
