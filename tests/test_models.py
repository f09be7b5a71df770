"""Tests for the model builder, weight transfer and BatchNorm re-estimation."""

import numpy as np
import tensorflow as tf
from conftest import feature_batch

from ecdctr.models.ctr_model import ModelConfig, build_model, serving_form, transfer_weights
from ecdctr.spec.feature_spec import load_spec
from ecdctr.training.loop import recalibrate_batchnorm, scored_batches

SPEC = load_spec("features/default.yaml")
CONFIG = ModelConfig(hidden=(8, 4), batch_size=16)


def _batch(n=16, shift=0.0):
    return feature_batch(SPEC, n, shift)


def _vocabs(user_tokens):
    v = {f.name: [f"v{i}" for i in range(5)] for f in SPEC.features if f.uses_vocab}
    v["user_id"] = user_tokens
    return v


TPM = {"user_id": (["v0", "v1"], np.ones((2, 3), "float32")),
       "item_id": (["v2"], np.full((1, 3), 2.0, "float32"))}


def test_model_outputs_probabilities_and_uses_tpm_table():
    model = build_model(SPEC.features, _vocabs(["v0", "v1"]), {}, CONFIG, _batch(), TPM)
    probs = model(_batch(), training=False).numpy()
    assert probs.shape == (16, 1) and ((probs > 0) & (probs < 1)).all()
    looked_up = model.tpm({"user_id": tf.constant(["v1", "unseen"]),
                           "item_id": tf.constant(["v2", "v2"])}).numpy()
    # tables in feature-name order: item_id, then user_id
    assert looked_up[0].tolist() == [2, 2, 2, 1, 1, 1]
    assert looked_up[1].tolist() == [2, 2, 2, 0, 0, 0]  # unseen user -> zero vector
    assert not any("tpm_snap" in v.name for v in model.trainable_variables)


def test_transfer_by_name_remaps_embeddings_and_resets_batchnorm():
    source = build_model(SPEC.features, _vocabs(["a", "b", "c"]), {}, CONFIG, _batch(), TPM,
                         name="cpm")
    source.fit(tf.data.Dataset.from_tensors((_batch(), tf.ones([16, 1]))).repeat(3), verbose=0)
    target = build_model(SPEC.features, _vocabs(["c", "new", "a"]), {}, CONFIG, _batch(), TPM,
                         name="actr")
    fresh_new_row = target.encoder.embeddings["user_id"].embeddings.numpy()[2].copy()
    report = transfer_weights(source, target)
    src = source.encoder.embeddings["user_id"].embeddings.numpy()
    dst = target.encoder.embeddings["user_id"].embeddings.numpy()
    np.testing.assert_array_equal(dst[1], src[3])  # "c"
    np.testing.assert_array_equal(dst[3], src[1])  # "a"
    np.testing.assert_array_equal(dst[2], fresh_new_row)  # "new" keeps its fresh row
    np.testing.assert_array_equal(target.mlp.dense[0].kernel.numpy(),
                                  source.mlp.dense[0].kernel.numpy())
    assert target.mlp.norms[0].moving_mean.numpy().tolist() == [0.0] * 8
    assert not report["fresh"]
    assert any("moving_variance" in k for k in report["reset"])


def test_recalibrate_batchnorm_estimates_the_data_statistics():
    model = build_model(SPEC.features, _vocabs(["v0"]), {}, CONFIG, _batch(), None)
    data = tf.data.Dataset.from_tensors((_batch(shift=1000.0), tf.ones([16, 1]))).repeat(4)
    assert recalibrate_batchnorm(model, data) == 4
    bn = model.mlp.norms[0]
    pre = model.mlp.dense[0](model.encoder(_batch(shift=1000.0))).numpy()
    np.testing.assert_allclose(bn.moving_mean.numpy(), pre.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn.moving_variance.numpy(), pre.var(0), rtol=1e-3, atol=1e-3)
    assert bn.momentum == 0.99


def test_k_snapshots_are_aggregated_and_merged_for_serving():
    older = {"user_id": (["v0", "v1", "v3"], np.full((3, 3), 0.5, "float32")),
             "item_id": (["v2"], np.full((1, 3), 1.0, "float32"))}
    model = build_model(SPEC.features, _vocabs(["v0", "v1"]), {}, CONFIG, _batch(),
                        [older, TPM], initial_ctr=0.1)
    model.fit(tf.data.Dataset.from_tensors((_batch(), tf.ones([16, 1]))).repeat(3), verbose=0)
    trained = model(_batch(), training=False).numpy()
    with serving_form(model) as frozen:
        assert type(frozen.tpm).__name__ == "TpmLookup"  # one lookup per entity when serving
        np.testing.assert_allclose(frozen(_batch(), training=False).numpy(), trained, atol=1e-5)
    assert type(model.tpm).__name__ == "TpmAggregator"
    assert any("tpm_attention" in v.name for v in model.trainable_variables)


def test_over_parameterized_apg_is_reachable_from_the_config_and_merged_for_serving(tmp_path):
    from ecdctr.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("spec: s.yaml\nlogs: l\nwork: w\nexport: e\n"
                    "model: {hidden: [8, 4], multi_domain: apg, apg_over_parameterize: true}\n")
    config = load_config(str(path)).actr
    assert config.apg_over_parameterize
    model = build_model(SPEC.features, _vocabs(["v0"]), {}, config, _batch(), TPM)
    assert model.mlp.dense[0].over_parameterize
    model.fit(tf.data.Dataset.from_tensors((_batch(), tf.ones([16, 1]))).repeat(2), verbose=0)
    trained = model(_batch(), training=False).numpy()
    with serving_form(model) as serving:
        assert not serving.mlp.over_parameterize  # U and V multiplied out
        np.testing.assert_allclose(serving(_batch(), training=False).numpy(), trained, atol=1e-5)
    assert model.mlp.over_parameterize  # the training form is back


def test_plain_tower_is_served_with_its_batchnorm_folded_into_the_dense_layers():
    model = build_model(SPEC.features, _vocabs(["v0"]), {}, CONFIG, _batch(), None)
    # BatchNorm statistics far from their initial 0 and 1, so folding them matters
    data = tf.data.Dataset.from_tensors((_batch(shift=1000.0), tf.ones([16, 1]))).repeat(4)
    recalibrate_batchnorm(model, data)
    trained = model(_batch(shift=1000.0), training=False).numpy()
    with serving_form(model) as serving:
        assert type(serving.mlp).__name__ == "FoldedMlp"
        call = tf.function(lambda x: serving.mlp(x, training=False))
        ops = {op.type for op in call.get_concrete_function(
            tf.TensorSpec([None, serving.mlp.kernels[0].shape[0]], tf.float32)).graph.get_operations()}
        assert not {"Rsqrt", "FusedBatchNormV3"} & ops  # no BatchNorm arithmetic left
        np.testing.assert_allclose(serving(_batch(shift=1000.0), training=False).numpy(), trained,
                                   rtol=1e-5, atol=1e-6)
    assert type(model.mlp).__name__ == "Mlp"


def test_scoring_traces_the_model_once_when_the_last_batch_is_shorter():
    """Before: a new trace for the short last batch of every evaluation, and TensorFlow's
    'triggered tf.function retracing' warning after a few evaluations."""
    model = build_model(SPEC.features, _vocabs(["v0", "v1"]), {}, CONFIG, _batch(), TPM)
    traces = []

    def counting(features, training):
        traces.append(1)  # Python runs only while tracing
        return model(features, training=training)

    rows = _batch(21)
    data = tf.data.Dataset.from_tensor_slices((rows, tf.zeros([21, 1]))).batch(8)  # 8, 8, 5
    for _ in range(3):
        scored = list(scored_batches(counting, SPEC, data))
        assert len(traces) == 1 and [len(b["probs"]) for b in scored] == [8, 8, 5]
        traces.clear()
    before = tf.function(lambda x: model(x, training=False), reduce_retracing=True)  # the old step
    for batch, (features, _) in zip(scored, data, strict=True):
        np.testing.assert_array_equal(batch["probs"], before(features).numpy().ravel())


def test_serving_form_puts_the_training_form_back_in_order_even_when_it_fails():
    """After an export the model's weights keep their order (get_weights/set_weights by
    position), and a serving form that cannot be made leaves the training form in place."""
    import dataclasses

    for config in (CONFIG, dataclasses.replace(CONFIG, multi_domain="adasparse")):
        model = build_model(SPEC.features, _vocabs(["v0", "v1"]), {}, config, _batch(), TPM)
        names, weights = [v.name for v in model.weights], model.get_weights()
        aggregator, tower = model.tpm, model.mlp
        with serving_form(model):
            pass
        assert [v.name for v in model.weights] == names
        model.set_weights(weights)
        broken = type(tower).for_serving
        try:
            type(tower).for_serving = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("x"))
            try:
                with serving_form(model):
                    pass
            except RuntimeError:
                pass
        finally:
            type(tower).for_serving = broken
        assert model.tpm is aggregator and model.mlp is tower
        assert [v.name for v in model.weights] == names
