"""The TF Serving contract of the export (signatures, warmup file, versions) and the publish gate."""

import logging
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from ecdctr.data.datasets import make_dataset, parse_batch
from ecdctr.data.rows import RowParser, to_example
from ecdctr.models import adasparse_compact, mlp
from ecdctr.models.adasparse import AdaSparseConfig
from ecdctr.models.adasparse_compact import CompactedAdaSparseMlp
from ecdctr.models.ctr_model import ModelConfig, build_model, is_preprocessed, serving_form
from ecdctr.serving.export import (
    OUTPUT_KEY,
    RAW_SIGNATURE,
    WARMUP_FILE,
    publish,
    raw_input_specs,
    read_warmup,
    reject,
    stage_saved_model,
    versions,
    warmup_examples,
)
from ecdctr.serving.gate import GateConfig, infra_gate, metric_gate
from ecdctr.spec.feature_spec import load_spec
from ecdctr.training.loop import fit

SPEC = load_spec("features/default.yaml")
ROWS = [{"request_id": str(i), "ts": 1, "click": i % 2, "user_id": f"u{i % 3}", "item_id": "i1",
         "scenario": "s1", "position": "p0", "user_segment": "g1", "price": 3.0 + i,
         "hist_categories": ["c1", "c2"][: i % 3]} for i in range(12)]


def _examples():
    parser = RowParser(SPEC)
    return [to_example(SPEC, parser.parse(r)).SerializeToString() for r in ROWS]


def _model(seed=0, multi_domain="adasparse"):
    features, _ = parse_batch(SPEC, tf.constant(_examples()))
    vocabs = {f.name: ["u0", "u1", "i1", "s1", "p0", "g1", "c1"] for f in SPEC.features
              if f.uses_vocab}
    config = ModelConfig(hidden=(8, 4), multi_domain=multi_domain, seed=seed)
    return build_model(SPEC.features, vocabs, {}, config, features, initial_ctr=0.3,
                       domains=["s1|p0|g1"])


def _held_out(folder, copies=1):
    path = str(folder / "part-00000.tfrecord.gz")
    with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
        for example in _examples() * copies:
            writer.write(example)
    return [path]


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("export") / "actr")
    model = _model()
    path = stage_saved_model(model, SPEC, base, _examples())
    return model, base, path


def test_saved_model_cli_lists_both_signatures(staged):
    _, _, path = staged
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    out = subprocess.run([cli, "show", "--dir", path, "--all"], capture_output=True, text=True,
                         timeout=120).stdout
    assert "signature_def['serving_default']" in out and f"signature_def['{RAW_SIGNATURE}']" in out
    assert out.count("Method name is: tensorflow/serving/predict") >= 2
    assert "examples" in out and OUTPUT_KEY in out


def test_warmup_file_holds_prediction_logs_of_synthetic_rows(staged):
    model, _, path = staged
    records = read_warmup(os.path.join(path, "assets.extra", WARMUP_FILE))
    assert 0 < len(records) <= 1000
    request = records[0].predict_log.request
    assert request.model_spec.signature_name == "serving_default"
    assert list(tf.make_ndarray(request.inputs["examples"])) == warmup_examples(model, SPEC)[:1]
    assert os.path.exists(os.path.join(path, "assets.extra", "spec.yaml"))


def test_training_and_serving_agree_on_the_same_rows(staged):
    model, _, path = staged
    loaded = tf.saved_model.load(path)
    features, _ = parse_batch(SPEC, tf.constant(_examples()))
    training = model(features, training=False).numpy().ravel()
    served = loaded.signatures["serving_default"](examples=tf.constant(_examples()))[OUTPUT_KEY]
    raw = {c: tf.constant([r.get(c, "") for r in ROWS]) for c in
           ("user_id", "item_id", "gender", "age_level", "city_tier", "scenario", "position",
            "user_segment", "category", "brand")}
    raw["price"] = tf.constant([float(r["price"]) for r in ROWS])
    raw["hist_categories"] = tf.constant([(r["hist_categories"] + ["", ""])[:2] for r in ROWS])
    served_raw = loaded.signatures[RAW_SIGNATURE](**raw)[OUTPUT_KEY]
    np.testing.assert_allclose(served.numpy(), training, atol=1e-6)
    np.testing.assert_allclose(served_raw.numpy(), training, atol=1e-6)


def test_a_model_trained_on_preprocessed_batches_serves_raw_examples_alike(tmp_path):
    """Training feeds the model CtrModel.preprocess's ids from the input pipeline (no string
    left for the step); the export takes raw Examples and looks them up inside. Both give the
    same predictions on the same rows, for every input preprocess makes (ids, TPM rows with
    the known flag, STAR's domain index)."""
    path = str(tmp_path / "rows.tfrecord.gz")
    with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
        for example in _examples():
            writer.write(example)
    features, _ = parse_batch(SPEC, tf.constant(_examples()))
    vocabs = {f.name: ["u0", "u1", "i1", "s1", "p0", "g1", "c1"] for f in SPEC.features
              if f.uses_vocab}
    tpm = {"user_id": (["u1", "u2"], np.ones((2, 4), np.float32)),
           "item_id": (["i1"], np.full((1, 4), 0.5, np.float32))}
    config = ModelConfig(hidden=(8, 4), multi_domain="star", tpm_known_flag=True)
    model = build_model(SPEC.features, vocabs, {}, config, features, tpm_tables=tpm,
                        initial_ctr=0.3, domains=["s1|p0|g1"])
    data = make_dataset(SPEC, [path], 5, preprocess=model.preprocess, rows=len(ROWS))
    batch = next(iter(data))[0]
    assert is_preprocessed(batch)
    assert not [t for t in tf.nest.flatten(batch, expand_composites=True) if t.dtype == tf.string]
    summary = fit(model, data, 2, 5, "actr")
    assert summary["steps"] == 6 and model.steps_per_execution.numpy() > 1  # 3 batches an epoch
    training = np.concatenate([model(x, training=False).numpy().ravel() for x, _ in data])
    with serving_form(model):
        staged_path = stage_saved_model(model, SPEC, str(tmp_path / "actr"))
    served = tf.saved_model.load(staged_path).signatures["serving_default"](
        examples=tf.constant(_examples()))[OUTPUT_KEY].numpy()
    np.testing.assert_allclose(served, training, atol=1e-6)
    assert np.ptp(training) > 1e-4  # rows differ: the comparison is not of constants


def _mixed_examples():
    """_examples' rows spread over several domains (an OOV scenario and position included)."""
    parser = RowParser(SPEC)
    return [to_example(SPEC, parser.parse({**r, "scenario": ["s1", "s9"][i % 2],
                                           "position": ["p0", "p0", "p7"][i % 3]})
                       ).SerializeToString() for i, r in enumerate(ROWS)]


def test_an_adasparse_model_whose_pruners_read_the_domain_alone_serves_as_it_predicts(
        tmp_path, monkeypatch):
    """pruner_input "domain": the export tabulates every pruner's factors per combination of
    the domain-aware features' ids and serves each domain's MLP compacted; the served
    predictions are the Keras model's on requests of one domain and of mixed domains, and the
    infra gate holds the compacted form against the training model."""
    features, _ = parse_batch(SPEC, tf.constant(_mixed_examples()))
    vocabs = {f.name: ["u0", "u1", "i1", "s1", "p0", "g1", "c1"] for f in SPEC.features
              if f.uses_vocab}
    config = ModelConfig(hidden=(8, 4), multi_domain="adasparse", seed=1,
                         adasparse=AdaSparseConfig(pruner_input="domain", ramp_steps=2,
                                                   export_form="compacted"))
    model = build_model(SPEC.features, vocabs, {}, config, features, initial_ctr=0.3,
                        domains=["s1|p0|g1"])
    data = make_dataset(SPEC, _held_out(tmp_path), 4, preprocess=model.preprocess,
                        rows=len(ROWS))
    fit(model, data, 2, 5, "actr")
    assert model.mlp.alpha.numpy() == 5.0  # the ramp is over: factors at their end value
    training = model(features, training=False).numpy().ravel()
    with serving_form(model):
        assert isinstance(model.mlp, CompactedAdaSparseMlp)  # per domain, pruned neurons gone
        # the factors are tabulated per domain ids: scenario, position, segment, 7 tokens in
        # each vocabulary and the OOV id
        assert [t.shape[0] for t in model.mlp.tables.factor_tables] == [8 * 8 * 8] * 2
    path = stage_saved_model(model, SPEC, str(tmp_path / "actr"))
    serve = tf.saved_model.load(path).signatures["serving_default"]
    served = serve(examples=tf.constant(_mixed_examples()))[OUTPUT_KEY].numpy()
    np.testing.assert_allclose(served, training, atol=1e-6)  # mixed domains
    assert np.ptp(training) > 1e-4
    for examples in (_examples(), _mixed_examples()[:1], _mixed_examples()[3::6]):
        served = serve(examples=tf.constant(examples))[OUTPUT_KEY].numpy()  # one domain
        expected = model(parse_batch(SPEC, tf.constant(examples))[0], training=False)
        np.testing.assert_allclose(served, expected.numpy().ravel(), atol=1e-6)
    reasons, details = infra_gate(model, SPEC, path, GateConfig())
    assert reasons == [] and details["fold_moved_share"] == 0
    compact = adasparse_compact.compacted_layers

    def zeroes_a_layer(*args):  # a wrong compaction, for the test
        kernels, biases = compact(*args)
        return [kernels[0] * 0.0, *kernels[1:]], biases

    monkeypatch.setattr(adasparse_compact, "compacted_layers", zeroes_a_layer)
    path = stage_saved_model(model, SPEC, str(tmp_path / "wrong"))
    reasons, details = infra_gate(model, SPEC, path, GateConfig())
    assert details["fold_moved_share"] > 0.2 and "a serving form is wrong" in reasons[0]


def test_unseen_ids_missing_features_and_malformed_examples(staged):
    _, _, path = staged
    serve = tf.saved_model.load(path).signatures["serving_default"]
    unseen = RowParser(SPEC).parse_features({"user_id": "nobody", "scenario": "new"})[0]
    from ecdctr.data.rows import features_example

    batch = [features_example(unseen).SerializeToString(), b""]  # b"": every feature missing
    assert np.isfinite(serve(examples=tf.constant(batch))[OUTPUT_KEY].numpy()).all()
    with pytest.raises(tf.errors.InvalidArgumentError, match="[Cc]ould not parse"):
        serve(examples=tf.constant([b"this is not a tf.Example"]))
    assert serve(examples=tf.constant(batch[:1]))[OUTPUT_KEY].shape == (1,)  # still serving


def test_publish_is_a_rename_and_keeps_the_newest(tmp_path):
    base = str(tmp_path / "actr")
    for _ in range(4):
        staging = os.path.join(base, f".staging-{_}")
        os.makedirs(os.path.join(staging, "variables"))
        publish(staging, base, keep=2)
    assert versions(base) == [3, 4] and not any(n.startswith(".staging") for n in os.listdir(base))
    staging = os.path.join(base, ".staging-x")
    os.makedirs(staging)
    folder = reject(staging, base, ["AUC dropped"])
    assert versions(base) == [3, 4] and os.path.exists(os.path.join(folder, "reason.json"))


def _figures(auc, mean, ctr, rows, auc_se=0.004):
    return {"auc": auc, "logloss": 0.2, "mean_prediction": mean, "ctr": ctr, "rows": rows,
            "clicks": round(ctr * rows), "predicted_clicks": mean * rows, "auc_se": auc_se}


def _paired(difference, se, logloss_rise=0.0, logloss_se=0.001):
    return {"auc": 0.70, "logloss": 0.2,
            "paired": {"auc_difference": difference, "difference_variance": se ** 2,
                       "logloss_difference": logloss_rise,
                       "logloss_difference_variance": logloss_se ** 2}}


@pytest.mark.parametrize("candidate, serving, expected", [
    (_figures(0.70, 0.05, 0.05, 10_000), _paired(0.0, 0.005), []),
    # 0.02 below on 500 clicks, paired noise 0.005: a drop beyond noise and the allowance
    (_figures(0.68, 0.05, 0.05, 10_000), _paired(-0.02, 0.005), ["below the serving version"]),
    # the same drop where the difference's noise is 0.015: a tie, it passes
    (_figures(0.68, 0.05, 0.05, 10_000), _paired(-0.02, 0.015), []),
    # no paired result: the two intervals' variances add up (0.004 each: 0.0057)
    (_figures(0.68, 0.05, 0.05, 10_000), {"auc": 0.70}, ["below the serving version"]),
    # a candidate whose LogLoss is 25% above the serving version's, beyond noise
    (_figures(0.70, 0.05, 0.05, 10_000), _paired(0.0, 0.005, 0.05, 0.004), ["LogLoss is"]),
    (_figures(float("nan"), float("nan"), 0.05, 10), None, ["not a number"]),
    (_figures(0.7, 0.10, 0.05, 10_000), None, ["far from the observed CTR"]),
    (_figures(0.7, 0.10, 0.05, 40), None, []),  # 4 expected clicks vs 2 seen: a tiny day
    # the real logs' fifth night: 0.24 predicted against a CTR of 0.52 on 27 rows (6.5 clicks
    # predicted, 14 seen: the ratio's interval [0.28, 0.85] reaches the allowed band)
    (_figures(0.7, 0.24, 0.52, 27), None, []),
    # no clicks on 500 rows where 2 were predicted: AUC is not defined, the day still passes
    (_figures(float("nan"), 0.004, 0.0, 500), _paired(float("nan"), float("nan")), []),
    # ... but 30 predicted clicks and none seen is a miscalibrated model
    (_figures(float("nan"), 0.06, 0.0, 500), None, ["far from the observed CTR"]),
])
def test_metric_gate(candidate, serving, expected):
    reasons = metric_gate(candidate, serving, GateConfig())
    assert len(reasons) == len(expected)
    assert all(e in r for e, r in zip(expected, reasons, strict=True))


def test_few_clicks_skip_the_auc_comparison_and_say_so():
    from ecdctr.serving.gate import metric_checks

    few = _figures(0.55, 0.05, 0.05, 400)  # 20 clicks: below gate.min_clicks = 30
    checks = metric_checks(few, _paired(-0.15, 0.01), GateConfig())
    assert not checks["auc"]["ran"] and "gate.min_clicks=30" in checks["auc"]["why"]
    assert checks["calibration"]["ran"] and checks["logloss"]["ran"]
    assert not [c for c in checks.values() if c.get("reason")]
    checks = metric_checks(few, _paired(-0.15, 0.01), GateConfig(min_clicks=10))
    assert checks["auc"]["ran"] and "below the serving version" in checks["auc"]["reason"]


def test_paired_auc_variance_equals_delong_on_the_same_rows():
    from ecdctr.evaluation.uncertainty import LOGIT_BINS, LOGIT_RANGE, PairedAuc

    rng = np.random.default_rng(0)
    labels = (rng.random(400) < 0.3).astype(int)
    # scores on the logit grid's cell centres (so binning is exact), correlated, with ties
    shared = rng.normal(size=400) + labels
    cells = [np.clip(np.round(LOGIT_BINS / 2 - 20 + 8 * (shared + noise * rng.normal(size=400))),
                     0, LOGIT_BINS - 1) for noise in (0.3, 0.6)]
    logits = [(c + 0.5) / LOGIT_BINS * 2 * LOGIT_RANGE - LOGIT_RANGE for c in cells]
    probs = [1 / (1 + np.exp(-x)) for x in logits]
    paired = PairedAuc()
    for start in range(0, 400, 150):
        paired.add(labels[start:start + 150], probs[0][start:start + 150], probs[1][start:start + 150])
    out = paired.result()
    pos, neg = labels == 1, labels == 0

    def placements(x):
        psi = (x[pos][:, None] > x[neg][None, :]) + 0.5 * (x[pos][:, None] == x[neg][None, :])
        return psi.mean(axis=1), psi.mean(axis=0), psi.mean()

    (v10a, v01a, auc_a), (v10b, v01b, auc_b) = placements(logits[0]), placements(logits[1])
    s10, s01 = np.cov(v10a, v10b), np.cov(v01a, v01b)
    variance = ((s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / pos.sum()
                + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / neg.sum())
    assert out["auc_difference"] == pytest.approx(auc_a - auc_b, abs=1e-12)
    assert out["difference_variance"] == pytest.approx(variance, rel=1e-9)
    unpaired = (np.var(v10a, ddof=1) + np.var(v10b, ddof=1)) / pos.sum() + (
        np.var(v01a, ddof=1) + np.var(v01b, ddof=1)) / neg.sum()
    assert out["difference_variance"] < unpaired / 2  # alike models: pairing matters


def test_a_zero_click_day_publishes_on_the_checks_that_are_defined(staged, tmp_path, logged):
    from ecdctr.evaluation.evaluator import Evaluator
    from ecdctr.serving.gate import run_gate

    model, _, path = staged
    quiet = [{**row, "click": 0} for row in ROWS[:4]]  # 4 rows, no click
    parser = RowParser(SPEC)
    examples = [to_example(SPEC, parser.parse(r)).SerializeToString() for r in quiet]
    held_out = str(tmp_path / "part-00000.tfrecord.gz")
    with tf.io.TFRecordWriter(held_out, tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
        for example in examples:
            writer.write(example)
    features, labels = parse_batch(SPEC, tf.constant(examples))
    evaluator = Evaluator()
    evaluator.add(labels.numpy(), model(features, training=False).numpy().ravel(),
                  features[SPEC.group_by].numpy())
    candidate = evaluator.result()
    assert candidate["clicks"] == 0 and math.isnan(candidate["auc"])
    report = run_gate(model, SPEC, path, path, [held_out], candidate, GateConfig())
    assert report["passed"], report
    checks = report["checks"]
    assert not checks["auc"]["ran"] and "0 clicks" in checks["auc"]["why"]
    assert checks["calibration"]["ran"] and checks["logloss"]["ran"] and checks["infra"]["ran"]
    assert report["serving"]["clicks"] == 0 and report["candidate"]["clicks"] == 0
    assert any("not checked: auc (0 clicks" in line for line in logged.messages)


def test_infra_gate_replays_warmup_in_a_fresh_process(staged):
    model, _, path = staged
    reasons, details = infra_gate(model, SPEC, path, GateConfig())
    assert reasons == [] and details["max_abs_diff"] <= 1e-5
    other = _model(seed=7)  # another model: its in-training answers differ from the export's
    reasons, details = infra_gate(other, SPEC, path, GateConfig())
    assert reasons and "differ from training" in reasons[0] and details["max_abs_diff"] > 1e-5
    assert not math.isnan(details["max_abs_diff"])


def test_nan_and_inf_numbers_are_served_as_the_default_not_nan(staged):
    _, _, path = staged
    loaded = tf.saved_model.load(path)
    serve = loaded.signatures["serving_default"]
    price = next(f for f in SPEC.features if f.column == "price")

    def example(value):
        e = tf.train.Example()
        e.features.feature["user_id"].bytes_list.value.append(b"u1")
        if value is not None:
            e.features.feature["price"].float_list.value.append(value)
        return e.SerializeToString()

    batch = [example(v) for v in (float("nan"), float("inf"), float("-inf"), None, price.default)]
    probs = serve(examples=tf.constant(batch))[OUTPUT_KEY].numpy()
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs, probs[3], atol=1e-6)  # all as if price were missing
    raw = {c: tf.constant(["u1"] * 3) for c, s in
           raw_input_specs(SPEC).items()
           if s.dtype == tf.string and s.shape.rank == 1}
    raw["price"] = tf.constant([float("nan"), float("inf"), price.default])
    raw["hist_categories"] = tf.constant([[""]] * 3)
    out = loaded.signatures[RAW_SIGNATURE](**raw)[OUTPUT_KEY].numpy()
    assert np.isfinite(out).all() and abs(out[0] - out[2]) < 1e-6 and abs(out[1] - out[2]) < 1e-6


def test_the_replay_child_dies_with_a_killed_parent(tmp_path):
    import signal
    import time

    pid_file = tmp_path / "child.pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    parent = subprocess.Popen([sys.executable, "-c", "import sys; from ecdctr.serving.gate import run_child; "
                               f"run_child([sys.executable, '-c', {child!r}], timeout=300)"])
    try:
        deadline = time.monotonic() + 120
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        pid = int(pid_file.read_text())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError("the replay child outlived its killed parent")
    finally:
        parent.kill()


def test_an_unloadable_serving_version_does_not_block_a_good_candidate(staged, tmp_path, logged):
    import shutil

    from ecdctr.serving.gate import run_gate

    model, _, path = staged
    broken = tmp_path / "7"
    shutil.copytree(path, broken)
    data = next((broken / "variables").glob("variables.data-*"))
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 32] = bytes(b ^ 0xFF for b in raw[len(raw) // 2:len(raw) // 2 + 32])
    data.write_bytes(bytes(raw))
    candidate = {"auc": 0.7, "logloss": 0.6, "mean_prediction": 0.5, "ctr": 0.5, "rows": 12}
    report = run_gate(model, SPEC, path, str(broken), _held_out(tmp_path), candidate, GateConfig())
    assert report["passed"], report
    assert report["serving"]["auc"] is None and report["serving"]["unloadable"]
    assert any(r.levelno == logging.WARNING and "cannot be scored" in r.getMessage()
               for r in logged.records)


def test_the_gate_scores_the_serving_version_streamed_as_on_whole_arrays(staged, tmp_path):
    from ecdctr.evaluation import metrics
    from ecdctr.serving.gate import saved_model_auc, score_saved_model

    model, _, path = staged
    files = _held_out(tmp_path, copies=5)  # 60 rows: batches of 7 leave a remainder
    batches = list(score_saved_model(path, files, SPEC.label, batch_size=7))
    labels, probs = (np.concatenate(column) for column in zip(*batches, strict=True))
    features, _ = parse_batch(SPEC, tf.constant(_examples() * 5))
    np.testing.assert_allclose(probs, model(features, training=False).numpy().ravel(), atol=1e-6)
    assert labels.tolist() == [r["click"] for r in ROWS] * 5
    assert saved_model_auc(path, files, SPEC.label) == metrics.auc(labels, probs)


def test_infra_gate_compares_the_replay_with_the_form_the_export_saved(tmp_path):
    """A BatchNorm folded into its dense layer rounds differently from the training form (here
    a bias and a moving mean of 1e4 cancel: the training form adds then subtracts them, the
    folded one never sees them). The replay is compared with the saved form, so such rounding
    is reported (fold_max_abs_diff), not a reason to reject the export."""
    model = _model(seed=3, multi_domain="none")
    dense, norm = model.mlp.dense[0], model.mlp.norms[0]
    dense.bias.assign(dense.bias + 1e4)
    norm.moving_mean.assign(norm.moving_mean + 1e4)
    path = stage_saved_model(model, SPEC, str(tmp_path / "actr"), _examples())
    reasons, details = infra_gate(model, SPEC, path, GateConfig())
    assert details["fold_max_abs_diff"] > GateConfig().max_abs_diff  # the old comparison failed
    assert reasons == [] and details["max_abs_diff"] <= 1e-6 and details["fold_moved_share"] == 0


def test_infra_gate_rejects_an_export_whose_serving_form_is_wrong(tmp_path, monkeypatch):
    """Replay and saved form agree when the fold itself is wrong (both use it): the gate also
    holds the saved form against the training model, row by row."""
    fold = mlp.folded_dense_batchnorm

    def forgets_the_variance(dense, norm):  # a wrong fold, for the test
        kernel, bias = fold(dense, norm)
        return kernel * 2.0, bias

    monkeypatch.setattr(mlp, "folded_dense_batchnorm", forgets_the_variance)
    model = _model(seed=4, multi_domain="none")  # a plain tower: Mlp.for_serving folds
    path = stage_saved_model(model, SPEC, str(tmp_path / "actr"), _examples())
    reasons, details = infra_gate(model, SPEC, path, GateConfig())
    assert details["max_abs_diff"] <= 1e-6 and details["fold_moved_share"] > 0.5
    assert len(reasons) == 1 and "a serving form is wrong" in reasons[0]
