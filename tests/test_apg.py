"""Tests for the APG tower: generated weights per domain, per-domain computation, export merge."""

import ecdctr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

# isort: split
import numpy as np
import pytest
import tensorflow as tf

from ecdctr.models.apg import ApgMlp, distinct_conditions
from ecdctr.seeding import set_random_seed

RNG = np.random.default_rng(0)
X = tf.constant(RNG.normal(size=(40, 6)).astype("float32"))
DOMAIN_TABLE = RNG.normal(size=(5, 3)).astype("float32")
INDEX = tf.constant(np.arange(40) % 5, tf.int32)
E = tf.constant(DOMAIN_TABLE[INDEX.numpy()])


@pytest.fixture(autouse=True)
def _seed():
    set_random_seed(0)


def _perturbed(tower: ApgMlp) -> ApgMlp:
    """Moves every weight and BatchNorm statistic away from its initial value."""
    tower(X, E, INDEX, training=True)
    for var in tower.variables:
        noise = RNG.normal(scale=0.3, size=var.shape).astype("float32")
        var.assign(tf.abs(var + noise) if "moving_variance" in var.name else var + noise)
    return tower


def test_output_of_a_row_depends_on_its_domain_embedding():
    tower = _perturbed(ApgMlp((8, 4), rank=4))
    x = tf.repeat(X[:1], 5, axis=0)
    out = tower(x, tf.constant(DOMAIN_TABLE), tf.range(5), training=False).numpy()
    assert min(np.abs(out[i] - out[j]).max() for i in range(5) for j in range(i)) > 1e-4
    again = tower(x, tf.constant(DOMAIN_TABLE[[0, 0, 0, 0, 0]]), tf.range(5), training=False)
    np.testing.assert_allclose(again.numpy(), np.repeat(out[:1], 5, axis=0), atol=1e-6)


def _naive(tower: ApgMlp, x: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Per row: build W = U S(e) V and b(e) for that row alone, then BatchNorm (inference), ReLU."""
    for dense, norm in zip(tower.dense, tower.norms, strict=True):
        u, v = (t.numpy() for t in dense.factors())
        gamma, beta, mean, variance = norm.get_weights()
        rows = []
        for x_row, e_row in zip(x, e, strict=True):
            s = dense.s_generator(e_row[None]).numpy().reshape(dense.rank, dense.rank)
            rows.append(x_row @ (u @ s @ v) + dense.bias_generator(e_row[None]).numpy()[0])
        h = np.stack(rows)
        x = np.maximum(gamma * (h - mean) / np.sqrt(variance + norm.epsilon) + beta, 0.0)
    return x


def test_per_domain_computation_equals_per_row_computation():
    tower = _perturbed(ApgMlp((8, 4), rank=4))
    e = E.numpy().copy()
    e[[0, 10]] = RNG.normal(size=(2, 3))  # two unseen combinations sharing the OOV domain 0
    got = tower(X, tf.constant(e), INDEX, training=False).numpy()
    assert np.abs(got - _naive(tower, X.numpy(), e)).max() <= 1e-5


def test_generator_runs_once_per_distinct_domain():
    conditions, position = distinct_conditions(E)
    assert conditions.shape == (5, 3)
    np.testing.assert_array_equal(tf.gather(conditions, position).numpy(), E.numpy())


def test_parameter_count_does_not_depend_on_the_number_of_domains():
    def count(num_domains, embedding_size=3):
        tower = ApgMlp((8, 4), rank=4)
        table = RNG.normal(size=(num_domains, embedding_size)).astype("float32")
        index = np.arange(40) % num_domains
        tower(X, tf.constant(table[index]), tf.constant(index, tf.int32), training=False)
        return tower.count_params()
    assert count(2) == count(5) == count(40)
    assert count(5, embedding_size=6) > count(5)


def test_gradients_reach_shared_factors_generators_and_embeddings():
    tower = ApgMlp((8, 4), rank=4)
    e = tf.Variable(E)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(tower(X, e, INDEX, training=True) - 1.0))
    first, second = tower.dense
    watched = [first.u, first.v, second.u, first.s_generator.kernel, second.s_generator.kernel,
               first.bias_generator.kernel, e]
    for var, grad in zip(watched, tape.gradient(loss, watched), strict=True):
        assert float(tf.reduce_max(tf.abs(tf.convert_to_tensor(grad)))) > 0, var.name


def test_over_parameterized_tower_trains_and_merges_into_the_same_function():
    tower = ApgMlp((8, 4), rank=4, over_parameterize=True)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(tower(X, E, INDEX, training=True) - 1.0))
    factors = [tower.dense[0].u_left, tower.dense[0].u_right, tower.dense[0].v_right]
    assert all(g is not None for g in tape.gradient(loss, factors))
    _perturbed(tower)
    merged = tower.merged_for_export()
    assert not merged.over_parameterize and merged.name == tower.name
    np.testing.assert_allclose(merged(X, E, INDEX, training=False).numpy(),
                               tower(X, E, INDEX, training=False).numpy(), atol=1e-5)
    assert merged.count_params() < tower.count_params()


def test_merge_needs_a_built_tower_and_is_a_no_op_without_over_parameterization():
    plain = ApgMlp((8, 4), rank=4)
    assert plain.merged_for_export() is plain
    with pytest.raises(ValueError, match="built"):
        ApgMlp((8, 4), rank=4, over_parameterize=True).merged_for_export()
