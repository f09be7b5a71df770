"""Tests for AdaSparse's sparsity: the ramp planned from the fit, the controller that brings each
layer into its band, and the achieved sparsity per layer and domain-size bin."""

import ecdctr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

# isort: split
import numpy as np
import pytest
import tensorflow as tf

from ecdctr.models.adasparse import AdaSparseConfig, AdaSparseMlp
from ecdctr.models.ctr_model import ModelConfig, build_model, transfer_weights
from ecdctr.models.sparsity import SparsityTally, controlled_shift, measure, write_tensorboard
from ecdctr.seeding import set_random_seed
from ecdctr.spec.feature_spec import load_spec
from ecdctr.training.loop import fit, recalibrate_batchnorm

SPEC = load_spec("features/default.yaml")
ROWS, BATCH = 1024, 64


def _features(rows: int, rng: np.random.Generator) -> dict:
    out = {}
    for f in SPEC.features:
        if f.kind == "numeric":
            out[f.name] = tf.constant(rng.normal(size=rows).astype("float32"))
        elif f.kind == "categorical":
            out[f.name] = tf.constant([f"v{i}" for i in rng.integers(0, 5, rows)])
        else:
            out[f.name] = tf.ragged.constant([["v1", "v2"][: i % 3] for i in range(rows)])
    return out


def _world():
    """A tiny world: ROWS rows of every feature (5 values each), clicks at 30%."""
    rng = np.random.default_rng(0)
    features = _features(ROWS, rng)
    labels = tf.constant((rng.random((ROWS, 1)) < 0.3).astype("float32"))
    return features, tf.data.Dataset.from_tensor_slices((features, labels)).batch(BATCH)


def _model(band: tuple[float, float], name: str = "m"):
    features, _ = _world()
    vocabs = {f.name: [f"v{i}" for i in range(5)] for f in SPEC.features if f.uses_vocab}
    config = ModelConfig(hidden=(16, 8), multi_domain="adasparse",
                         adasparse=AdaSparseConfig(r_min=band[0], r_max=band[1]))
    return build_model(SPEC.features, vocabs, {}, config, {k: v[:16] for k, v in features.items()},
                       name=name)


@pytest.mark.parametrize("band", [(0.15, 0.25), (0.6, 0.7)])
def test_a_two_epoch_fit_reaches_its_band_in_every_layer(band):
    set_random_seed(0)
    features, data = _world()
    model = _model(band)
    fit(model, data, epochs=2, batch_size=BATCH, name="t", rows=ROWS)  # 32 steps
    assert model.mlp.ramp_steps == 8  # half of the first epoch's 16 steps
    recalibrate_batchnorm(model, data)  # as train_ctr does after every fit
    x, e_d, _, _ = model.tower_inputs(features)
    for share in model.mlp.sparsity(x, e_d):
        assert band[0] - 0.05 <= share <= band[1] + 0.05


def test_a_warm_start_continues_the_schedule_and_the_controller():
    set_random_seed(0)
    _, data = _world()
    source, target = _model((0.3, 0.5), "cpm"), _model((0.3, 0.5), "actr")
    fit(source, data.take(8), epochs=1, batch_size=BATCH, name="s", rows=8 * BATCH)
    report = transfer_weights(source, target)
    assert {"mlp/pruning_step", "mlp/ramp_length", "mlp/pruner_shift"} <= set(report["copied"])
    np.testing.assert_array_equal(target.mlp.pruner_shift.numpy(), source.mlp.pruner_shift.numpy())
    fit(target, data.take(2), epochs=1, batch_size=BATCH, name="t", rows=2 * BATCH)
    assert target.mlp.ramp_steps == 4  # the parent's plan, not half of this 2-step fit
    assert int(target.mlp.step) == 10 and float(target.mlp.alpha) == target.mlp.config.alpha_end


def test_the_controller_moves_a_layer_toward_its_band_and_leaves_it_alone_inside():
    shift = tf.Variable([0.0, 0.0, 0.0])
    controlled_shift(shift, [tf.constant(0.0), tf.constant(0.2), tf.constant(0.9)],
                     tf.constant(2.0), r_min=0.15, r_max=0.25, rate=0.5)
    # below: shift up (prune more) by 0.5 * 0.2 / 2; inside: unchanged; above: down
    np.testing.assert_allclose(shift.numpy(), [0.05, 0.0, -0.175], atol=1e-6)


def test_tally_reads_sparsity_overall_and_per_bin(tmp_path):
    tally = SparsityTally()
    masks = [np.array([[1, 0], [1, 1], [0, 0]], float), np.array([[1], [0], [1]], float)]
    tally.add(masks, np.array(["a", "b", "b"]))
    assert tally.overall() == [0.5, pytest.approx(0.3333)]
    assert tally.by_bin([["a"], ["b"], ["c"]]) == [[0.5, 0.0], [0.5, 0.5], None]
    write_tensorboard(str(tmp_path), 3, tally.overall(), tally.by_bin([["a"], ["b"]]))
    tags = {v.tag for e in tf.compat.v1.train.summary_iterator(
        str(next(tmp_path.iterdir()))) for v in e.summary.value}
    assert {"sparsity/layer_0", "sparsity/bin_2/layer_1"} <= tags


def test_measure_bins_the_rows_by_the_models_domains():
    set_random_seed(0)
    features, data = _world()
    model = _model((0.15, 0.25))
    model(features, training=False)
    out = measure(model, data, [["<unseen>", *model.domains], ["nowhere"]], max_batches=2)
    assert len(out["layers"]) == 2 and out["bins"][1] is None
    assert out["bins"][0] == out["layers"] and all(0 <= s <= 1 for s in out["layers"])


@pytest.mark.parametrize("pruner_input", ["layer", "domain"])
def test_the_serving_form_folds_the_controllers_shift(pruner_input):
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(64, 12)).astype("float32"))
    e_d = tf.constant(rng.normal(size=(64, 4)).astype("float32"))
    tower = AdaSparseMlp((16, 8), AdaSparseConfig(ramp_steps=3, r_min=0.5, r_max=0.6,
                                                  pruner_input=pruner_input))
    for _ in range(4):
        tower(x, domain_embedding=e_d, training=True)
    assert np.all(tower.pruner_shift.numpy() > 0)  # pruning more, toward the band
    np.testing.assert_allclose(tower.for_serving()(x, domain_embedding=e_d).numpy(),
                               tower(x, domain_embedding=e_d, training=False).numpy(), atol=1e-4)
