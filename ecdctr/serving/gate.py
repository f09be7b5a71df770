"""The publish gate: a candidate SavedModel reaches serving only if it is no worse than the
serving version on the same held-out day (metric gate) and answers its warmup requests the
same in a fresh process that cannot import this project as during training (infra gate)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tf_keras as keras

from ecdctr.data.datasets import feature_description, features_by_name
from ecdctr.evaluation.evaluator import GroupedAuc, auc_from_counts
from ecdctr.io import storage
from ecdctr.models.ctr_model import CtrModel, serving_form
from ecdctr.serving.export import INPUT_KEY, OUTPUT_KEY, WARMUP_FILE, read_warmup
from ecdctr.spec.feature_spec import Spec

Log = Callable[[str], None]
FOLD_TOLERANCE = 1e-3  # a warmup row whose exported-form prediction moves more counts as moved

# Runs in a fresh interpreter: loads the SavedModel with TensorFlow alone and replays the
# warmup records; importing this project (ecdctr, pipelines) fails there on purpose.
_REPLAY = r"""
import json, sys
class _NoProject:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ecdctr", "pipelines"):
            raise ImportError(name + " must not be needed to serve the model")
sys.meta_path.insert(0, _NoProject())
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2
if sys.argv[1].split("://")[0] in ("s3", "hdfs", "viewfs", "az"):
    import tensorflow_io  # registers the file system, as TF Serving has it built in
model = tf.saved_model.load(sys.argv[1])
out = []
for record in tf.data.TFRecordDataset(sys.argv[1] + "/assets.extra/" + sys.argv[2]):
    request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
    signature = model.signatures[request.model_spec.signature_name or "serving_default"]
    inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
    result = signature(**{k: tf.constant(v) for k, v in inputs.items()})
    out.append(result[sys.argv[3]].numpy().tolist())
print(json.dumps(out), flush=True)
import os; os._exit(0)  # tensorflow-io's S3 client aborts at interpreter exit
"""


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the publish gate."""

    max_auc_drop: float = 0.01  # candidate AUC may be at most this much below serving's
    max_calibration_error: float = 0.5  # |mean prediction / observed CTR - 1|
    max_abs_diff: float = 1e-5  # serving vs in-training predictions on the warmup requests
    # share of warmup rows on which the exported (folded) form may differ from the training
    # form by more than FOLD_TOLERANCE: a wrong fold moves most rows, float rounding none, a
    # pruner logit at its threshold a few
    max_fold_share: float = 0.01
    keep_versions: int = 5  # published versions kept
    max_drift: int = 0  # drift warnings allowed on the ad days the A-CTR learned in the run


def score_saved_model(path: str, files: Sequence[str], label: str, batch_size: int = 4096
                      ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(labels, click probabilities) of each batch of the GZIP TFRecord files' Examples
    through a SavedModel's serving_default, read batch by batch."""
    serve = tf.saved_model.load(path).signatures["serving_default"]
    label_only = {label: tf.io.FixedLenFeature([], tf.int64)}
    for batch in tf.data.TFRecordDataset(list(files), compression_type="GZIP").batch(batch_size):
        labels = tf.io.parse_example(batch, label_only)[label]
        yield labels.numpy(), serve(**{INPUT_KEY: batch})[OUTPUT_KEY].numpy()


def saved_model_auc(path: str, files: Sequence[str], label: str) -> float:
    """AUC of a SavedModel on the files' Examples, counted exactly in bounded memory."""
    counter = GroupedAuc()
    try:
        for labels, probs in score_saved_model(path, files, label):
            counter.add(np.zeros(len(labels), np.int64), probs, labels)
        counts = counter.counts()
    finally:
        counter.close()
    aucs = auc_from_counts(counts["clicks"], counts["non_clicks"], counts["u2"])
    return float(aucs[0]) if len(aucs) else float("nan")


def metric_gate(candidate: dict, serving: dict | None, config: GateConfig) -> list[str]:
    """Reasons to reject from metrics on the same held-out rows (empty list: pass)."""
    reasons = []
    for key in ("auc", "logloss", "mean_prediction"):
        if candidate.get(key) is None or not math.isfinite(candidate[key]):
            reasons.append(f"candidate {key} is {candidate.get(key)} (not a number)")
    if reasons:
        return reasons
    ctr, mean, rows = candidate["ctr"], candidate["mean_prediction"], candidate["rows"]
    # Far = off by more than the allowed share AND beyond 3 standard deviations of the click
    # count the predictions expect, so a day with a handful of clicks cannot reject by chance.
    sigma = math.sqrt(max(rows * mean * (1 - mean), 1e-12))
    if (ctr > 0 and abs(mean / ctr - 1) > config.max_calibration_error
            and abs(ctr - mean) * rows > 3 * sigma):
        reasons.append(f"mean prediction {mean:.4f} is far from the observed CTR {ctr:.4f} "
                       f"(allowed: ±{config.max_calibration_error:.0%}, or within 3 sigma)")
    if serving is not None and candidate["auc"] < serving["auc"] - config.max_auc_drop:
        reasons.append(f"AUC {candidate['auc']:.4f} is more than {config.max_auc_drop} below the "
                       f"serving version's {serving['auc']:.4f} on the same rows")
    return reasons


def _die_with_parent() -> None:
    """Runs in the child before exec: Linux kills it when the process that started it dies
    (prctl PR_SET_PDEATHSIG), so a killed daily run leaves no replay running."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the timeout still bounds it
        pass


def run_child(argv: Sequence[str], timeout: float, env: dict | None = None,
              cwd: str | None = None) -> subprocess.CompletedProcess:
    """subprocess.run(capture_output, text) whose child dies with this process and is killed
    at the timeout."""
    with subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env, cwd=cwd, preexec_fn=_die_with_parent) as child:
        try:
            out, err = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


def replay_in_fresh_process(staging: str, timeout: float = 300) -> list[list[float]]:
    """Serving predictions of the warmup records, computed by a new Python process in which
    only TensorFlow (and TF Serving's protos) can be imported."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_USE_LEGACY_KERAS")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    done = run_child([sys.executable, "-c", _REPLAY, staging, WARMUP_FILE, OUTPUT_KEY],
                     timeout=timeout, env=env, cwd="/")
    if done.returncode != 0:
        raise RuntimeError(f"the SavedModel failed in a fresh process: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def infra_gate(model: keras.Model, spec: Spec, staging: str, config: GateConfig) -> tuple[list[str], dict]:
    """Replays the warmup records in a fresh process and compares them with the model's own
    predictions on the same Examples, in the form the export saved (models.serving_form: folded
    towers, merged TPM table). Returns (reasons, details); details also give how far that form
    is from the training form: `fold_max_abs_diff`, reported, and `fold_moved_share`, the
    share of rows moved by more than FOLD_TOLERANCE, gated by max_fold_share (a pruner logit
    within float rounding of its threshold may flip a factor on a few rows; a wrong fold moves
    most)."""
    requests = read_warmup(storage.join(staging, "assets.extra", WARMUP_FILE))
    if not requests:
        return ["no warmup requests to replay"], {}
    try:
        served = replay_in_fresh_process(staging)
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
        return [f"infra: {e}"], {}
    inputs = []
    for request in requests:
        examples = tf.make_ndarray(request.predict_log.request.inputs[INPUT_KEY])
        # requests carry features only (no label), as serving's do
        parsed = tf.io.parse_example(tf.constant(examples), feature_description(spec, False))
        inputs.append(features_by_name(spec, parsed))
    training = [model(features, training=False).numpy().ravel() for features in inputs]
    with serving_form(model) if isinstance(model, CtrModel) else contextlib.nullcontext():
        saved = [model(features, training=False).numpy().ravel() for features in inputs]
    diff = max(float(np.max(np.abs(e - np.asarray(a)))) for e, a in zip(saved, served, strict=True))
    moved = np.abs(np.concatenate(saved) - np.concatenate(training))
    fold, share = float(np.max(moved)), float(np.mean(~(moved <= FOLD_TOLERANCE)))
    details = {"warmup_requests": len(requests), "max_abs_diff": diff, "fold_max_abs_diff": fold,
               "fold_moved_share": share}
    reasons = []
    if not diff <= config.max_abs_diff:
        reasons.append(f"serving answers differ from training by {diff:.2e} "
                       f"(allowed {config.max_abs_diff:.0e})")
    if not share <= config.max_fold_share:
        reasons.append(f"the exported form (folded towers, merged TPM table) moves {share:.1%} of "
                       f"the warmup rows' predictions by more than {FOLD_TOLERANCE:.0e} from the "
                       f"training model's (max {fold:.2e}; allowed {config.max_fold_share:.1%} of "
                       f"rows): a serving form is wrong")
    return reasons, details


def run_gate(model: keras.Model, spec: Spec, staging: str, serving_path: str | None,
             held_out: Sequence[str], candidate: dict, config: GateConfig,
             log: Log = print) -> dict:
    """Both gates. `candidate` holds the candidate's metrics on the held-out day, whose GZIP
    TFRecord files are `held_out`; the serving version is scored on the same rows, streamed.
    Returns the gate's report."""
    serving = None
    if serving_path:
        try:
            serving = {"path": serving_path,
                       "auc": saved_model_auc(serving_path, held_out, spec.label)}
        except (tf.errors.OpError, OSError, ValueError, KeyError) as e:
            # A broken serving version must not block a good candidate: judged on its own.
            problem = " ".join(str(e).split())[:300]
            log(f"WARNING: the serving version {serving_path} cannot be scored ({problem}); "
                f"the candidate is judged without it")
            serving = {"path": serving_path, "auc": None, "unloadable": problem}
    reasons = metric_gate(candidate, serving if serving and serving["auc"] is not None else None,
                          config)
    infra_reasons, infra = infra_gate(model, spec, staging, config)
    reasons += infra_reasons
    report = {"passed": not reasons, "reasons": reasons, "serving": serving, "infra": infra,
              "candidate_auc": candidate.get("auc")}
    log(f"gate: {'PASSED' if not reasons else 'REJECTED'}"
        + (f" vs serving AUC {serving['auc']:.4f}" if serving and serving["auc"] is not None
           else " (serving version unloadable)" if serving else " (no serving version yet)")
        + (f", warmup replay max diff {infra['max_abs_diff']:.1e}" if infra else "")
        + ("" if not reasons else ": " + "; ".join(reasons)))
    return report
