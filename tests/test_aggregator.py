"""Tests for the TPM snapshot aggregator: masked attention, what trains, the merged serving table."""

import ecdctr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

# isort: split
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from ecdctr.layers.aggregator import MergedTpmLookup, TpmAggregator
from ecdctr.seeding import set_random_seed

DIMS = {"user": 4, "item": 3}


def _snapshots(seed: int = 0) -> list[dict]:
    """Three snapshots, oldest first. users u0..u5 everywhere; u6 only in the oldest; u7 only in
    the middle one; u8 in the oldest and newest; u9 only in the newest. Items: i0..i3 everywhere,
    i4 only in the middle one."""
    rng = np.random.default_rng(seed)
    users = [[*range(6), 6, 8], [*range(6), 7], [*range(6), 8, 9]]
    items = [[0, 1, 2, 3], [0, 1, 2, 3, 4], [3, 2, 1, 0]]
    return [{"user": ([f"u{i}" for i in u], rng.normal(size=(len(u), DIMS["user"])).astype("float32")),
             "item": ([f"i{i}" for i in it], rng.normal(size=(len(it), DIMS["item"])).astype("float32"))}
            for u, it in zip(users, items, strict=True)]


def _batch(users: list[str], items: list[str]) -> dict[str, tf.Tensor]:
    return {"user": tf.constant(users), "item": tf.constant(items)}


ALL_USERS = [f"u{i}" for i in range(10)] + ["new_user", ""]
ALL_ITEMS = [f"i{i % 5}" for i in range(10)] + ["new_item", "i9"]


def _vector(snapshot: dict, feature: str, key: str) -> np.ndarray:
    keys, matrix = snapshot[feature]
    return matrix[keys.index(key)]


def _trained(snapshots: list[dict], steps: int = 30) -> TpmAggregator:
    """An aggregator after a few Adam steps on a toy regression, so attention is not uniform."""
    set_random_seed(0)
    agg = TpmAggregator(snapshots, name="tpm")
    batch = _batch(ALL_USERS, ALL_ITEMS)
    target = tf.constant(np.random.default_rng(1).normal(size=(len(ALL_USERS), 7)).astype("float32"))
    optimizer = keras.optimizers.Adam(0.1)
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((agg(batch) - target) ** 2)
        optimizer.apply_gradients(zip(tape.gradient(loss, agg.trainable_weights),
                                      agg.trainable_weights, strict=True))
    return agg


def test_merged_lookup_equals_aggregator_for_known_and_unseen_ids():
    agg = _trained(_snapshots())
    user_rows = agg.snapshot_vectors("user", agg.lookups["user"](tf.constant(["u0", "u8"])))
    weights = agg.attentions["user"].snapshot_weights(*user_rows).numpy()
    assert np.abs(weights[0] - 1 / 3).max() > 0.02  # training moved attention off uniform
    merged = MergedTpmLookup(agg.merged_tables())
    batch = _batch(ALL_USERS, ALL_ITEMS)
    expected = agg(batch).numpy()
    assert expected.shape == (len(ALL_USERS), sum(DIMS.values()))
    np.testing.assert_allclose(merged(batch).numpy(), expected, atol=1e-5, rtol=0)
    assert not expected[-2:].any()  # new_user/new_item and ""/i9: seen in no snapshot


def test_merged_tables_cover_the_union_of_keys_in_feature_order():
    snapshots = _snapshots()
    tables = TpmAggregator(snapshots).merged_tables()
    assert list(tables) == ["item", "user"]
    assert sorted(tables["user"][0]) == sorted(f"u{i}" for i in range(10))
    assert tables["user"][1].shape == (10, DIMS["user"])
    assert sorted(tables["item"][0]) == [f"i{i}" for i in range(5)]


def test_attention_ignores_snapshots_where_the_id_is_missing():
    snapshots = _snapshots()
    agg = _trained(snapshots)
    out = agg(_batch(["u7", "u6", "u9", "u8"], ["i4", "i0", "i0", "i0"])).numpy()
    # an id in one snapshot only is exactly that snapshot's vector, whatever the attention learned
    np.testing.assert_array_equal(out[0, DIMS["item"]:], _vector(snapshots[1], "user", "u7"))
    np.testing.assert_array_equal(out[0, :DIMS["item"]], _vector(snapshots[1], "item", "i4"))
    np.testing.assert_array_equal(out[1, DIMS["item"]:], _vector(snapshots[0], "user", "u6"))
    np.testing.assert_array_equal(out[2, DIMS["item"]:], _vector(snapshots[2], "user", "u9"))
    # u8 (oldest and newest): softmax over those two only, the middle one's zero row left out
    attention = agg.attentions["user"]
    e = np.stack([_vector(snapshots[0], "user", "u8"), _vector(snapshots[2], "user", "u8")])
    kernel, bias, query, age_bias = (w.numpy() for w in attention.weights)
    scores = np.tanh(e @ kernel + bias) @ query + age_bias[[2, 0]]
    softmax = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    np.testing.assert_allclose(out[3, DIMS["item"]:], softmax @ e, atol=1e-6)
    with_zero_row = np.vstack([e[:1], np.zeros((1, DIMS["user"])), e[1:]])
    all_scores = np.tanh(with_zero_row @ kernel + bias) @ query + age_bias[::-1]
    unmasked = np.exp(all_scores) / np.exp(all_scores).sum() @ with_zero_row
    assert np.abs(unmasked - softmax @ e).max() > 1e-3


def test_gradients_reach_the_attention_not_the_snapshot_tables():
    agg = TpmAggregator(_snapshots(), name="tpm")
    batch = _batch(ALL_USERS, ALL_ITEMS)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(agg(batch) ** 2)
    names = sorted(w.name for w in agg.trainable_weights)
    assert names == sorted(f"tpm_attention_{f}/{p}:0" for f in DIMS
                           for p in ("kernel", "bias", "query", "age_bias"))
    frozen = sorted(w.name for w in agg.non_trainable_weights)
    assert frozen == sorted([f"tpm_snap{k}_{f}:0" for f in DIMS for k in range(3)]
                            + [f"tpm_present_{f}:0" for f in DIMS])
    grads = tape.gradient(loss, agg.trainable_weights + agg.non_trainable_weights)
    for weight, grad in zip(agg.trainable_weights, grads, strict=False):
        assert grad is not None and np.abs(grad.numpy()).max() > 0, weight.name
    assert all(g is None for g in grads[len(agg.trainable_weights):])


def test_one_snapshot_gives_the_snapshot_itself():
    snapshot = _snapshots()[:1]
    agg = TpmAggregator(snapshot)
    assert not agg.trainable_weights  # attention over one snapshot is the identity
    out = agg(_batch(["u6", "u0", "nobody"], ["i2", "i0", "i0"])).numpy()
    np.testing.assert_array_equal(out[0, DIMS["item"]:], _vector(snapshot[0], "user", "u6"))
    np.testing.assert_array_equal(out[1, :DIMS["item"]], _vector(snapshot[0], "item", "i0"))
    assert not out[2, DIMS["item"]:].any()
    keys, matrix = agg.merged_tables()["user"]
    np.testing.assert_array_equal(matrix, np.stack([_vector(snapshot[0], "user", k) for k in keys]))


def test_mismatched_snapshots_raise_naming_the_feature_and_the_snapshot():
    snapshots = _snapshots()
    keys, matrix = snapshots[2]["item"]
    snapshots[2]["item"] = (keys, matrix[:, :2])
    with pytest.raises(ValueError, match=r"snapshot 2 .*'item'.*dimension 2.*has 3"):
        TpmAggregator(snapshots)
    snapshots = _snapshots()
    del snapshots[1]["user"]
    with pytest.raises(ValueError, match=r"snapshot 1 .*missing \['user'\]"):
        TpmAggregator(snapshots)
    snapshots = _snapshots()
    snapshots[1]["user"] = (snapshots[1]["user"][0][:-1], snapshots[1]["user"][1])
    with pytest.raises(ValueError, match=r"snapshot 1 .*'user'.*shape"):
        TpmAggregator(snapshots)
    with pytest.raises(ValueError, match="at least one"):
        TpmAggregator([])


class _TinyModel(keras.Model):
    def __init__(self, snapshots: list[dict], **kwargs):
        super().__init__(**kwargs)
        self.tpm = TpmAggregator(snapshots, name="tpm")
        self.logit = keras.layers.Dense(1, name="logit")

    def call(self, inputs: dict[str, tf.Tensor]) -> tf.Tensor:
        return tf.sigmoid(self.logit(self.tpm(inputs)))


def test_a_model_with_the_aggregator_saves_and_serves(tmp_path):
    model = _TinyModel(_snapshots(), name="cpm")
    batch = _batch(ALL_USERS, ALL_ITEMS)
    expected = model(batch).numpy()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, "user"),
                                  tf.TensorSpec([None], tf.string, "item")])
    def serve(user: tf.Tensor, item: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"probability": model({"user": user, "item": item})}

    tf.saved_model.save(model, str(tmp_path), signatures={"serving_default": serve})
    loaded = tf.saved_model.load(str(tmp_path)).signatures["serving_default"]
    got = loaded(user=batch["user"], item=batch["item"])["probability"].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)
