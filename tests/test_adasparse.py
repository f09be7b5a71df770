"""Tests for the AdaSparse tower: pruner forms, gradients, alpha schedule, regularizer, sparse path."""

import ecdctr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import ecdctr.models.adasparse_serving

# isort: split
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from towers import task_loss, train_tower

from ecdctr.models.adasparse import (
    FORMS,
    PLACEMENTS,
    PRUNER_INPUTS,
    AdaSparseConfig,
    AdaSparseMlp,
    DomainPruner,
)
from ecdctr.models.ctr_model import ModelConfig, build_model, transfer_weights
from ecdctr.models.mlp import Mlp
from ecdctr.models.sparsity import sparsity_regularizer
from ecdctr.seeding import set_random_seed
from ecdctr.spec.feature_spec import load_spec

RNG = np.random.default_rng(0)
X = tf.constant(RNG.normal(size=(64, 12)).astype("float32"))
E = tf.constant(RNG.normal(size=(64, 4)).astype("float32"))
Y = tf.constant((RNG.random((64, 1)) < 0.5).astype("float32"))
HEAD = tf.constant(RNG.normal(size=(8, 1)).astype("float32"))


@pytest.fixture(autouse=True)
def _seed():
    set_random_seed(0)


def _task_loss(tower: AdaSparseMlp, training: bool = True) -> tf.Tensor:
    return task_loss(tower, X, E, Y, HEAD, training)


def _train(tower: AdaSparseMlp, steps: int, learning_rate: float = 0.1) -> None:
    train_tower(tower, X, E, Y, HEAD, steps, learning_rate)


@pytest.mark.parametrize(("field", "value"), [
    ("form", "sign"), ("placement", "hidden"), ("pruner_input", "both"), ("beta", 0.0), ("epsilon", 1.5),
    ("alpha_start", 0.0), ("alpha_end", 0.05), ("ramp_steps", -1), ("ramp_epochs", 0.0),
    ("r_min", -0.1), ("r_max", 0.1), ("lambda_start", -1.0), ("lambda_end", 0.0),
    ("control_rate", -0.1)])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"AdaSparseConfig.{field} "):
        AdaSparseConfig(**{field: value})


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("form", FORMS)
def test_gradients_reach_every_pruner_and_training_moves_them(form, placement):
    tower = AdaSparseMlp((16, 8), AdaSparseConfig(form=form, placement=placement, ramp_steps=3))
    with tf.GradientTape() as tape:
        loss = _task_loss(tower)
    kernels = [p.dense.kernel for p in tower.pruners]
    assert len(kernels) == 2
    for grad in tape.gradient(loss, kernels):
        assert np.all(np.isfinite(grad.numpy())) and np.abs(grad.numpy()).max() > 0
    before = [k.numpy() for k in kernels]
    _train(tower, 3)
    for old, kernel in zip(before, kernels, strict=True):
        assert np.abs(kernel.numpy() - old).max() > 1e-6


def test_alpha_rises_in_training_is_saved_and_frozen_at_inference(tmp_path):
    config = AdaSparseConfig(ramp_steps=4)
    tower = AdaSparseMlp((8,), config)
    tower(X, domain_embedding=E, training=False)
    assert float(tower.alpha) == pytest.approx(config.alpha_start)
    alphas = []
    for _ in range(6):
        tower(X, domain_embedding=E, training=True)
        alphas.append(float(tower.alpha))
    assert alphas[:4] == sorted(set(alphas[:4]))
    assert alphas[3:] == pytest.approx([config.alpha_end] * 3)
    assert any(v is tower.alpha for v in tower.non_trainable_variables)
    assert not any(v is tower.alpha for v in tower.trainable_variables)

    alpha = float(tower.alpha)
    for _ in range(10):
        tower(X, domain_embedding=E, training=False)
    assert float(tower.alpha) == alpha and int(tower.step) == 6

    path = tf.train.Checkpoint(tower=tower).save(str(tmp_path / "ckpt"))
    saved = {name for name, _ in tf.train.list_variables(path)}
    assert any("alpha" in n for n in saved) and any("pruning_step" in n for n in saved)
    assert not any("ramp_steps" in n for n in saved)  # the config's, never a saved variable
    restored = AdaSparseMlp((8,), config)
    restored(X, domain_embedding=E, training=False)
    tf.train.Checkpoint(tower=restored).restore(path).assert_consumed()
    assert float(restored.alpha) == alpha and int(restored.step) == 6



def test_the_ramp_is_planned_once_from_the_first_fits_epoch_and_saved(tmp_path):
    config = AdaSparseConfig(ramp_epochs=0.5)  # ramp_steps 0: planned from the epoch
    tower = AdaSparseMlp((8,), config)
    tower(X, domain_embedding=E, training=False)
    assert tower.ramp_steps == 0
    tower.plan_schedule(20)
    tower.plan_schedule(400)  # a later fit (or a daily update) keeps the planned ramp
    assert tower.ramp_steps == 10
    for _ in range(5):
        tower(X, domain_embedding=E, training=True)
    assert float(tower.alpha) == pytest.approx(config.alpha_start + (config.alpha_end
                                               - config.alpha_start) * 5 / 10)
    path = tf.train.Checkpoint(tower=tower).save(str(tmp_path / "ckpt"))
    restored = AdaSparseMlp((8,), config)
    restored(X, domain_embedding=E, training=False)
    tf.train.Checkpoint(tower=restored).restore(path).assert_consumed()
    assert restored.ramp_steps == 10
    np.testing.assert_allclose(restored.pruner_shift.numpy(), tower.pruner_shift.numpy())
    fixed = AdaSparseMlp((8,), AdaSparseConfig(ramp_steps=7))
    fixed(X, domain_embedding=E, training=False)
    fixed.plan_schedule(20)  # the config's ramp_steps wins
    assert fixed.ramp_steps == 7 and float(fixed.ramp_length) == 0


def _alpha_trajectory(tower: AdaSparseMlp, batches: int) -> list[float]:
    """alpha after each step of one keras fit over `batches` batches of 8 rows."""
    x_in, e_in = keras.Input((12,)), keras.Input((4,))
    model = keras.Model([x_in, e_in], keras.layers.Dense(1)(tower(x_in, domain_embedding=e_in)))
    model.compile(keras.optimizers.SGD(0.01), keras.losses.BinaryCrossentropy(from_logits=True))
    alphas: list[float] = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda *_: alphas.append(float(tower.alpha)))
    data = tf.data.Dataset.from_tensor_slices(((X[:8], E[:8]), Y[:8])).batch(8).repeat(batches)
    model.fit(data, epochs=1, verbose=0, callbacks=[record])
    return alphas


def test_alpha_after_k_steps_does_not_depend_on_the_fit_length():
    config = AdaSparseConfig(ramp_steps=6)
    expected = [config.alpha_start + (config.alpha_end - config.alpha_start) * min(k / 6, 1)
                for k in range(1, 13)]
    long = _alpha_trajectory(AdaSparseMlp((8,), config), batches=12)
    short_tower = AdaSparseMlp((8,), config)
    short = _alpha_trajectory(short_tower, batches=2)
    assert long == pytest.approx(expected) and short == pytest.approx(expected[:2])
    # a later fit (e.g. the next day's warm start) continues the count where the last one ended
    assert _alpha_trajectory(short_tower, batches=3) == pytest.approx(expected[2:5])
    assert int(short_tower.step) == 5


def test_warm_start_copies_the_step_counter_but_takes_ramp_steps_from_its_own_config():
    spec = load_spec("features/default.yaml")
    features = {}
    for f in spec.features:
        if f.kind == "numeric":
            features[f.name] = tf.constant(np.linspace(0, 50, 16, dtype="float32"))
        elif f.kind == "categorical":
            features[f.name] = tf.constant([f"v{i % 5}" for i in range(16)])
        else:
            features[f.name] = tf.ragged.constant([["c1", "c2"][: i % 3] for i in range(16)])
    vocabs = {f.name: [f"v{i}" for i in range(5)] for f in spec.features if f.uses_vocab}

    def model(ramp_steps: int, name: str):
        config = ModelConfig(hidden=(8, 4), multi_domain="adasparse",
                             adasparse=AdaSparseConfig(ramp_steps=ramp_steps))
        return build_model(spec.features, vocabs, {}, config, features, name=name)

    source, target = model(4, "cpm"), model(8, "actr")
    source.fit(tf.data.Dataset.from_tensors((features, tf.ones([16, 1]))).repeat(3), verbose=0)
    report = transfer_weights(source, target)
    assert {"mlp/pruning_step", "mlp/alpha", "mlp/ramp_length", "mlp/pruner_shift"} <= set(
        report["copied"])
    assert int(target.mlp.step) == 3 and float(target.mlp.alpha) == float(source.mlp.alpha)
    target.fit(tf.data.Dataset.from_tensors((features, tf.ones([16, 1]))), verbose=0)
    c = target.mlp.config
    assert float(target.mlp.alpha) == pytest.approx(
        c.alpha_start + (c.alpha_end - c.alpha_start) * 4 / 8)


def test_fit_advances_alpha_once_per_step_and_reports_sparsity():
    x_in, e_in = keras.Input((12,)), keras.Input((4,))
    tower = AdaSparseMlp((8,), AdaSparseConfig(form="binarization", ramp_steps=100))
    model = keras.Model([x_in, e_in], keras.layers.Dense(1)(tower(x_in, domain_embedding=e_in)))
    model.compile(keras.optimizers.SGD(0.01), keras.losses.BinaryCrossentropy(from_logits=True))
    history = model.fit([X, E], Y, batch_size=16, epochs=1, verbose=0)
    assert int(tower.step) == 4
    assert "sparsity_0" in history.history
    model.evaluate([X, E], Y, verbose=0)
    model.predict([X, E], verbose=0)
    assert int(tower.step) == 4


def test_regularizer_is_zero_inside_band_and_pulls_outside():
    share = tf.Variable(0.2)
    for value, inside in ((0.15, True), (0.2, True), (0.25, True), (0.05, False), (0.6, False)):
        share.assign(value)
        with tf.GradientTape() as tape:
            penalty = sparsity_regularizer([share], 0.5, r_min=0.15, r_max=0.25)
        grad = tape.gradient(penalty, share)
        if inside:
            assert float(penalty) == 0.0 and float(grad) == 0.0
        else:
            assert float(penalty) == pytest.approx(0.5 * (value - 0.2) ** 2)
            assert float(grad) == pytest.approx(0.5 * abs(value - 0.2) * np.sign(value - 0.2))


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("form", ["binarization", "fusion"])
def test_regularizer_gradient_reaches_the_pruner_outside_band(form, placement):
    tower = AdaSparseMlp((16, 8), AdaSparseConfig(form=form, placement=placement))
    with tf.GradientTape() as tape:
        tower(X, domain_embedding=E, training=True)  # alpha = 0.1: nothing pruned, r = 0
        penalty = tf.add_n(tower.losses)
    assert float(penalty) > 0
    for grad in tape.gradient(penalty, [p.dense.kernel for p in tower.pruners]):
        assert np.abs(grad.numpy()).max() > 0


def test_pruner_forms():
    def pruner(form):
        layer = DomainPruner(32, AdaSparseConfig(form=form))
        layer.logits(E, X)
        layer.dense.kernel.assign(layer.dense.kernel * 3.0)
        return layer

    scaling, _ = pruner("scaling")(E, X, tf.constant(5.0))
    assert np.all(scaling.numpy() > 0)

    binary, share = pruner("binarization")(E, X, tf.constant(5.0))
    values = set(np.unique(binary.numpy()))
    assert values == {0.0, 1.0}
    assert float(share) == pytest.approx(float(np.mean(binary.numpy() == 0)))

    fusion_pruner = pruner("fusion")
    fusion, _ = fusion_pruner(E, X, tf.constant(5.0))
    scaled = (2.0 * tf.sigmoid(5.0 * fusion_pruner.logits(E, X))).numpy()
    assert 0 < np.mean(scaled <= 0.25) < 1
    np.testing.assert_array_equal(fusion.numpy() == 0, scaled <= 0.25)
    np.testing.assert_array_equal(fusion.numpy()[scaled > 0.25], scaled[scaled > 0.25])


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("form", ["binarization", "fusion"])
def test_sparse_inference_matches_dense_with_real_pruning(form, placement):
    tower = AdaSparseMlp((32, 16, 8), AdaSparseConfig(form=form, placement=placement,
                                                      ramp_steps=3))
    _train(tower, 5)
    sparsity = tower.sparsity(X, E)
    # the layers whose pruned zeros feed a tf.sparse matmul: all under input placement
    assert all(0 < r < 1 for r in (sparsity if placement == "input" else sparsity[:-1]))
    dense = tower(X, domain_embedding=E, training=False)
    tower.sparse_inference = True
    sparse = tower(X, domain_embedding=E, training=False)
    call = tf.function(lambda x, e: tower(x, domain_embedding=e, training=False))
    traced = call(X, E)
    assert np.abs(sparse.numpy() - dense.numpy()).max() <= 1e-5
    assert np.abs(traced.numpy() - dense.numpy()).max() <= 1e-5
    ops = [op.type for op in call.get_concrete_function(X, E).graph.get_operations()]
    assert ops.count("SparseTensorDenseMatMul") == (3 if placement == "input" else 2)


@pytest.mark.parametrize(("placement", "widths"), [("input", (12, 16)), ("output", (16, 8))])
def test_masks_per_domain_and_weight_names_match_the_plain_mlp(placement, widths):
    tower = AdaSparseMlp((16, 8), AdaSparseConfig(form="binarization", placement=placement),
                         name="mlp")
    masks = tower.masks(X[:5], E[:5])
    assert [m.shape for m in masks] == [(5, w) for w in widths]
    assert len(tower.sparsity(X[:5], E[:5])) == 2
    assert set(np.unique(np.concatenate([m.numpy().ravel() for m in masks]))) <= {0.0, 1.0}
    plain = Mlp((16, 8), name="mlp")
    plain(X)
    assert {v.name for v in plain.variables} <= {v.name for v in tower.variables}


def _reference(tower: AdaSparseMlp, x: tf.Tensor, e: tf.Tensor) -> tf.Tensor:
    """The tower's inference output written out from its own sublayers, per placement."""
    for i, (dense, norm, pruner) in enumerate(zip(tower.dense, tower.norms, tower.pruners,
                                                  strict=True)):
        pi, _ = pruner(e, x, tower.alpha, tower.pruner_shift[i])  # logits less the controller's
        if tower.config.placement == "input":  # the paper's equation 3: scale W^l's input
            x = tf.nn.relu(norm(dense(x * pi), training=False))
        else:
            x = tf.nn.relu(norm(dense(x), training=False)) * pi
    return x


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_each_placement_computes_its_documented_forward(placement):
    tower = AdaSparseMlp((16, 8), AdaSparseConfig(form="fusion", placement=placement,
                                                  ramp_steps=3))
    _train(tower, 4)  # alpha at its end value: some factors are 0, the others vary
    assert 0 < tower.sparsity(X, E)[0] < 1
    widths = (12, 16) if placement == "input" else (16, 8)
    assert [p.units for p in tower.pruners] == list(widths)
    assert [tuple(p.dense.kernel.shape) for p in tower.pruners] == [(4 + 12, widths[0]),
                                                                    (4 + 16, widths[1])]
    np.testing.assert_allclose(tower(X, domain_embedding=E, training=False).numpy(),
                               _reference(tower, X, E).numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("form", ["binarization", "fusion"])
def test_input_placement_prunes_the_embedding_input(form):
    tower = AdaSparseMlp((16, 8), AdaSparseConfig(form=form))  # placement input by default
    tower(X, domain_embedding=E, training=False)
    pruner = tower.pruners[0]
    assert pruner.units == X.shape[-1]
    # pruner_0 reads the domain only (so moving x does not move the factors) and prunes column 3
    kernel = pruner.dense.kernel.numpy()
    kernel[E.shape[-1]:] = 0.0
    kernel[:, 3] = 0.0
    pruner.dense.kernel.assign(kernel)
    pruner.dense.bias.assign(np.where(np.arange(12) == 3, -100.0, 0.0).astype("float32"))
    masks = tower.masks(X, E)[0].numpy()
    assert np.all(masks[:, 3] == 0) and np.all(masks[:, 5] == 1)

    def output(column):
        moved = X.numpy()
        if column is not None:
            moved[:, column] += 10.0
        return tower(tf.constant(moved), domain_embedding=E, training=False).numpy()

    np.testing.assert_array_equal(output(3), output(None))  # the pruned column has no effect
    assert np.abs(output(5) - output(None)).max() > 1e-3  # a kept one does


@pytest.mark.parametrize("pruner_input", PRUNER_INPUTS)
@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("form", FORMS)
def test_serving_form_predicts_as_the_tower_with_its_constants_folded(form, placement,
                                                                       pruner_input):
    tower = AdaSparseMlp((16, 8), AdaSparseConfig(form=form, placement=placement, ramp_steps=3,
                                                  pruner_input=pruner_input))
    _train(tower, 5)  # alpha at its end value; fusion and binarization prune
    if form != "scaling":
        assert all(0 < r < 1 for r in tower.sparsity(X, E))
    names = sorted(v.name for v in tower.variables)
    expected = tower(X, domain_embedding=E, training=False).numpy()
    serving = tower.for_serving()
    call = tf.function(lambda x, e: serving(x, domain_embedding=e, training=False))
    np.testing.assert_allclose(call(X, E).numpy(), expected, rtol=1e-5, atol=1e-5)
    ops = [op.type for op in call.get_concrete_function(X, E).graph.get_operations()]
    # per layer one matmul for the dense layer with its BatchNorm folded in and one for the
    # pruner (pruners reading e_d alone: one for all); no straight-through terms, no zero
    # shares, no BatchNorm arithmetic
    assert ops.count("MatMul") == (2 * 2 if pruner_input == "layer" else 2 + 1)
    assert not {"StopGradient", "Mean", "Rsqrt"} & set(ops)
    assert ops.count("Cast") == (form == "binarization" and pruner_input == "domain")
    serving.sparse_inference = True
    sparse = tf.function(lambda x, e: serving(x, domain_embedding=e, training=False))
    np.testing.assert_allclose(sparse(X, E).numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(serving(X, domain_embedding=E, training=True).numpy(), expected,
                               rtol=1e-5, atol=1e-5)  # inference only, whatever training says
    assert sorted(v.name for v in tower.variables) == names  # the tower is left as it was
    np.testing.assert_array_equal(tower(X, domain_embedding=E, training=False).numpy(), expected)


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("form", FORMS)
def test_domain_pruners_read_the_domain_embedding_alone_and_train(form, placement):
    tower = AdaSparseMlp((16, 8), AdaSparseConfig(form=form, placement=placement, ramp_steps=3,
                                                  pruner_input="domain"))
    tower(X, domain_embedding=E)
    before = [p.dense.kernel.numpy() for p in tower.pruners]
    assert [k.shape for k in before] == ([(4, 12), (4, 16)] if placement == "input"
                                         else [(4, 16), (4, 8)])
    _train(tower, 5)
    assert all(np.abs(p.dense.kernel.numpy() - k).max() > 0
               for p, k in zip(tower.pruners, before, strict=True))
    other = tf.constant(RNG.normal(size=X.shape).astype("float32"))
    same_domains = tf.concat([E[:1]] * len(E), axis=0)
    for mask, other_mask, first in zip(tower.masks(X, E), tower.masks(other, E),
                                       tower.masks(X, same_domains), strict=True):
        np.testing.assert_array_equal(mask, other_mask)  # the layer inputs do not matter
        np.testing.assert_array_equal(first, np.broadcast_to(first[:1], first.shape))
    if form != "scaling":
        assert all(0 < r < 1 for r in tower.sparsity(X, E))


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("form", FORMS)
def test_domain_pruners_factors_are_tabulated_per_combination_of_domain_ids(form, placement,
                                                                          monkeypatch):
    tables = [RNG.normal(size=(3, 2)).astype("float32"), RNG.normal(size=(5, 2)).astype("float32")]
    first, second = RNG.integers(0, 3, 64), RNG.integers(0, 5, 64)
    e_d = tf.constant(np.concatenate([tables[0][first], tables[1][second]], axis=1))
    tower = AdaSparseMlp((16, 8), AdaSparseConfig(form=form, placement=placement, ramp_steps=3,
                                                  pruner_input="domain"))
    train_tower(tower, X, e_d, Y, HEAD, 5, 0.5)
    expected = tower(X, domain_embedding=e_d, training=False).numpy()
    serving = tower.for_serving(domain_tables=tables)
    assert serving.reads_domain_key and [t.shape for t in serving.factor_tables] == (
        [(15, 12), (15, 16)] if placement == "input" else [(15, 16), (15, 8)])
    key = tf.constant(first * 5 + second, tf.int32)  # as FeatureEncoder.domain_key makes it
    call = tf.function(lambda x, e, k: serving(x, domain_embedding=e, domain_index=k))
    np.testing.assert_allclose(call(X, e_d, key).numpy(), expected, rtol=1e-5, atol=1e-5)
    ops = [op.type for op in call.get_concrete_function(X, e_d, key).graph.get_operations()]
    assert ops.count("MatMul") == 2 and "Sigmoid" not in ops  # the dense layers' only
    serving.sparse_inference = True
    np.testing.assert_allclose(serving(X, domain_embedding=e_d, domain_index=key).numpy(),
                               expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="pass domain_index"):
        serving(X, domain_embedding=e_d)
    assert not tower.for_serving(domain_tables=tables[:1] * 17).reads_domain_key  # 3^17 rows
    size = 4 * 15 * sum(t.shape[1] for t in serving.factor_tables)  # float32 bytes
    monkeypatch.setattr(ecdctr.models.adasparse_serving, "MAX_FACTOR_BYTES", size - 1)
    assert not tower.for_serving(domain_tables=tables).reads_domain_key  # tables too large


def test_first_pruner_reads_the_domain_columns_of_its_input_when_told_where_they_are():
    inputs = tf.concat([X[:, :8], E, X[:, 8:]], axis=-1)  # the domain embedding in columns 8-11
    tower = AdaSparseMlp((16, 8), AdaSparseConfig(ramp_steps=3))
    train_tower(tower, inputs, E, Y, HEAD, 5, 0.1)
    assert 0 < tower.sparsity(inputs, E)[0] < 1
    expected = tower(inputs, domain_embedding=E, training=False).numpy()
    serving = tower.for_serving(range(8, 12))
    call = tf.function(lambda x, e: serving(x, domain_embedding=e))
    np.testing.assert_allclose(call(inputs, E).numpy(), expected, rtol=1e-5, atol=1e-5)
    ops = [op.type for op in call.get_concrete_function(inputs, E).graph.get_operations()]
    assert ops.count("ConcatV2") == 1  # [e_d ; x_1] for pruner_1 only
    with pytest.raises(ValueError, match="domain_columns: 3 columns"):
        tower.for_serving(range(8, 11))
