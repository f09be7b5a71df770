"""The publish gate: a candidate SavedModel reaches serving only if it is not worse than the
serving version on the same held-out rows (a day, or a request-id share of it) beyond the
noise, is calibrated within what the clicks can tell (metric gate), and answers its warmup
requests the same in a fresh process that cannot import this project as during training
(infra gate)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import math
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tf_keras as keras

from ecdctr.data.datasets import HeldOut, feature_description, features_by_name
from ecdctr.evaluation.evaluator import GroupedAuc, auc_from_counts
from ecdctr.evaluation.uncertainty import Z95, PairedAuc, calibration_interval, delong_variance, interval
from ecdctr.io import storage
from ecdctr.models.ctr_model import CtrModel, serving_form
from ecdctr.serving.export import INPUT_KEY, OUTPUT_KEY, WARMUP_FILE, read_warmup
from ecdctr.spec.feature_spec import Spec

logger = logging.getLogger(__name__)

# the candidate's figures a verdict repeats (ecdctr.evaluation.evaluator's result keys)
CANDIDATE_FIGURES = ("rows", "clicks", "auc", "auc_ci", "gauc", "gauc_ci", "gauc_groups", "logloss",
                     "predicted_clicks", "calibration_ratio", "calibration_ci", "calibration_error")
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
    """Thresholds of the publish gate (docs/quality.md says how each was measured)."""

    max_auc_drop: float = 0.01  # a drop beyond this AND beyond the noise (95%) rejects
    # fewer clicks (or non-clicks) than this on the held-out day: AUC is not compared (DeLong's
    # interval covers 85-91% instead of 95% below 30 clicks: benchmarks/delong_coverage.py)
    min_clicks: int = 30
    # predicted / observed clicks whose 95% interval lies wholly outside [1/(1+e), 1+e] rejects
    max_calibration_error: float = 0.5
    # candidate LogLoss above the serving version's by this share AND beyond the noise rejects
    # (retraining with another seed moves it up to 3% on the simulator, 7% on the real logs)
    max_logloss_rise: float = 0.1
    max_abs_diff: float = 1e-5  # serving vs in-training predictions on the warmup requests
    # share of warmup rows on which the exported (folded) form may differ from the training
    # form by more than FOLD_TOLERANCE: a wrong fold moves most rows, float rounding none, a
    # pruner logit at its threshold a few
    max_fold_share: float = 0.01
    keep_versions: int = 5  # published versions kept
    max_drift: int = 0  # drift warnings allowed on the ad days the A-CTR learned in the run


def score_saved_model(path: str, files: Sequence[str], label: str, batch_size: int = 4096,
                      split: HeldOut | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(labels, click probabilities) of each batch of the GZIP TFRecord files' Examples
    (split: only its side of a request-id split of them) through a SavedModel's
    serving_default, read batch by batch."""
    serve = tf.saved_model.load(path).signatures["serving_default"]
    label_only = {label: tf.io.FixedLenFeature([], tf.int64)}
    records = (split.records(files, shuffle=False, seed=0) if split is not None
               else tf.data.TFRecordDataset(list(files), compression_type="GZIP"))
    for batch in records.batch(batch_size):
        labels = tf.io.parse_example(batch, label_only)[label]
        yield labels.numpy(), serve(**{INPUT_KEY: batch})[OUTPUT_KEY].numpy()


def saved_model_auc(path: str, files: Sequence[str], label: str) -> float:
    """AUC of a SavedModel on the files' Examples, counted exactly in bounded memory."""
    return score_serving(path, files, label)["auc"]


def score_serving(path: str, files: Sequence[str], label: str, candidate: str | None = None,
                  split: HeldOut | None = None) -> dict:
    """The serving version's AUC (exact, with its clicks and DeLong interval) and LogLoss on
    the files' Examples (split: only its side of a request-id split of them); with `candidate`
    (the staged SavedModel), also `paired`: both models scored on the same rows, the AUC
    difference's variance (uncertainty.PairedAuc) and the LogLoss difference with its
    variance, row by row. Streamed in bounded memory."""
    counter, paired = GroupedAuc(), PairedAuc()
    rows, sums = 0, np.zeros(3)  # serving log loss; candidate minus serving, and its square
    theirs = score_saved_model(candidate, files, label, split=split) if candidate else None
    try:
        for labels, probs in score_saved_model(path, files, label, split=split):
            counter.add(np.zeros(len(labels), np.int64), probs, labels)
            served = _row_logloss(labels, probs)
            sums[0] += served.sum()
            rows += len(labels)
            if theirs is not None:  # the same files in the same batches: the same rows
                probs_c = next(theirs)[1]
                paired.add(labels, probs_c, probs)
                rise = _row_logloss(labels, probs_c) - served
                sums[1:] += rise.sum(), (rise * rise).sum()
        counts = counter.counts()
    finally:
        counter.close()
    aucs = auc_from_counts(counts["clicks"], counts["non_clicks"], counts["u2"])
    variance = delong_variance(counts["clicks"], counts["non_clicks"], counts["u2"],
                               counts["click_squares"], counts["non_click_squares"])
    auc = float(aucs[0]) if len(aucs) else float("nan")
    out = {"path": path, "rows": rows, "clicks": int(counts["clicks"].sum()), "auc": auc,
           "auc_se": math.sqrt(variance[0]) if len(aucs) and variance[0] >= 0 else float("nan"),
           "auc_ci": interval(auc, variance[0]) if len(aucs) else None,
           "logloss": sums[0] / rows if rows else float("nan")}
    if theirs is not None and rows > 1:
        mean = sums[1] / rows
        out["paired"] = {**paired.result(), "logloss_difference": mean,
                         "logloss_difference_variance":
                             max(sums[2] / rows - mean * mean, 0.0) / (rows - 1)}
    return out


def _row_logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    p = np.clip(np.asarray(probs, np.float64).ravel(), eps, 1 - eps)
    y = np.asarray(labels, np.float64).ravel()
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def metric_gate(candidate: dict, serving: dict | None, config: GateConfig) -> list[str]:
    """Reasons to reject from metrics on the same held-out rows (empty list: pass)."""
    return [check["reason"] for check in metric_checks(candidate, serving, config).values()
            if check.get("reason")]


def metric_checks(candidate: dict, serving: dict | None, config: GateConfig) -> dict[str, dict]:
    """Each metric check by name: {"ran": bool, "why": what it looked at or why it did not
    run, "reason": why it rejects (only when it does)}. A check runs only where its figure is
    defined and holds evidence: AUC needs gate.min_clicks clicks and non-clicks and a serving
    version; a difference within its 95% interval is a tie and passes."""
    checks = {"defined": _defined(candidate)}
    if checks["defined"].get("reason"):
        return checks
    checks["calibration"] = _calibration_check(candidate, config)
    checks["logloss"] = _logloss_check(serving, config)
    checks["auc"] = _auc_check(candidate, serving, config)
    return checks


def _defined(candidate: dict) -> dict:
    bad = [f"candidate {key} is {candidate.get(key)} (not a number)"
           for key in ("logloss", "mean_prediction")
           if candidate.get(key) is None or not math.isfinite(candidate[key])]
    return {"ran": True, "why": "LogLoss and mean prediction are numbers",
            **({"reason": "; ".join(bad)} if bad else {})}


def _counts(candidate: dict) -> tuple[int, float]:
    """(clicks, predicted clicks) of a candidate's metrics (older reports: from CTR and mean)."""
    rows = candidate["rows"]
    clicks = candidate.get("clicks", round(candidate.get("ctr", 0.0) * rows))
    return int(clicks), float(candidate.get("predicted_clicks", candidate["mean_prediction"] * rows))


def _calibration_check(candidate: dict, config: GateConfig) -> dict:
    """Predicted over observed clicks: rejects only when its 95% interval (the clicks' Poisson
    interval) lies wholly outside [1/(1+e), 1+e], e = max_calibration_error."""
    clicks, predicted = _counts(candidate)
    if not candidate["rows"]:
        return {"ran": False, "why": "no held-out rows"}
    low, high = calibration_interval(predicted, clicks)
    bound = 1 + config.max_calibration_error
    shown = f"[{low:.2f}, {'inf' if high is None else f'{high:.2f}'}]"
    allowed = f"[{1 / bound:.2f}, {bound:.2f}]"
    check = {"ran": True, "why": f"{predicted:.1f} predicted vs {clicks} observed clicks: "
                                 f"ratio {shown} at 95%, allowed {allowed}"}
    if low > bound or (high is not None and high < 1 / bound):
        check["reason"] = (f"mean prediction {candidate['mean_prediction']:.4f} is far from the "
                           f"observed CTR {clicks / candidate['rows']:.4f}: predicted over "
                           f"observed clicks {shown} at 95% lies outside {allowed}")
    return check


def _logloss_check(serving: dict | None, config: GateConfig) -> dict:
    """Candidate LogLoss against the serving version's on the same rows, row by row: rejects
    when it is above by more than max_logloss_rise of it and the rise's interval excludes 0.
    Defined without a click, so a day with none is still judged on it."""
    paired = (serving or {}).get("paired")
    if not paired:
        return {"ran": False, "why": "no serving version scored on the same rows"}
    rise, variance = paired["logloss_difference"], paired["logloss_difference_variance"]
    low = rise - Z95 * math.sqrt(variance)
    allowed = config.max_logloss_rise * serving["logloss"]
    check = {"ran": True, "why": f"LogLoss {rise:+.4f} vs serving's {serving['logloss']:.4f} "
                                 f"(95% from {low:+.4f}; allowed +{allowed:.4f})"}
    if rise > allowed and low > 0:
        check["reason"] = (f"LogLoss is {rise:.4f} above the serving version's "
                           f"{serving['logloss']:.4f} on the same rows, beyond the noise "
                           f"(95% interval from {low:+.4f}) and the allowed {allowed:.4f}")
    return check


def _auc_check(candidate: dict, serving: dict | None, config: GateConfig) -> dict:
    """Candidate AUC against the serving version's on the same rows: rejects when the drop is
    beyond max_auc_drop and the difference's 95% interval lies below 0 (paired DeLong when the
    gate scored both; else the two intervals' variances added, which overstates the noise)."""
    clicks = _counts(candidate)[0]
    non_clicks = candidate["rows"] - clicks
    if min(clicks, non_clicks) < config.min_clicks:
        return {"ran": False, "why": f"{clicks} clicks and {non_clicks} non-clicks held out: "
                                     f"fewer than gate.min_clicks={config.min_clicks} of a "
                                     f"class, AUC is undefined or noise: not compared"}
    if serving is None or serving.get("auc") is None or not math.isfinite(serving["auc"]):
        return {"ran": False, "why": "no serving version to compare with"}
    drop = serving["auc"] - candidate["auc"]
    high = -drop + Z95 * math.sqrt(_difference_variance(candidate, serving))
    check = {"ran": True, "why": f"AUC {candidate['auc']:.4f} vs serving's {serving['auc']:.4f} "
                                 f"over {clicks} clicks: difference {-drop:+.4f}, 95% up to "
                                 f"{high:+.4f}"}
    if drop > config.max_auc_drop and high < 0:
        check["reason"] = (f"AUC {candidate['auc']:.4f} is more than {config.max_auc_drop} below "
                           f"the serving version's {serving['auc']:.4f} on the same rows, beyond "
                           f"the noise (95% interval of the difference up to {high:+.4f})")
    return check


def _difference_variance(candidate: dict, serving: dict) -> float:
    """Variance of candidate AUC minus serving AUC: paired when the gate scored both models,
    else the two intervals' variances added; 0 when neither side carries an interval."""
    paired = serving.get("paired") or {}
    if math.isfinite(paired.get("difference_variance", float("nan"))):
        return paired["difference_variance"]
    se = [side.get("auc_se", float("nan")) for side in (candidate, serving)]
    return sum(x * x for x in se if x is not None and math.isfinite(x))


def _die_with_parent() -> None:
    """Runs in the child before exec: Linux kills it when the process that started it dies
    (prctl PR_SET_PDEATHSIG), so a killed daily run leaves no replay running."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the timeout still bounds it
        pass


def run_child(argv: Sequence[str], timeout: float, env: dict | None = None,
              cwd: str | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    """subprocess.run(capture_output, text; `stdin` as its input) whose child dies with this
    process and runs in a process group of its own, killed whole at the timeout (the child and
    whatever it started, e.g. a shell's children), then TimeoutExpired is raised."""
    with subprocess.Popen(list(argv), stdin=subprocess.PIPE if stdin is not None else None,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          cwd=cwd, preexec_fn=_die_with_parent, start_new_session=True) as child:
        try:
            out, err = child.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
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


def one_domain(spec: Spec, features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """A batch's features with every row's domain-aware features set to its first row's: a
    request of one domain, which serving forms with per-domain weights run on their own path."""
    out = dict(features)
    for f in spec.domain_features:
        value = features[f.name]
        rows = value.nrows() if isinstance(value, tf.RaggedTensor) else tf.shape(value)[0]
        out[f.name] = tf.gather(value, tf.zeros([rows], tf.int32))
    return out


def infra_gate(model: keras.Model, spec: Spec, staging: str, config: GateConfig) -> tuple[list[str], dict]:
    """Replays the warmup records in a fresh process and compares them with the model's own
    predictions on the same Examples, in the form the export saved (models.serving_form: folded
    towers, merged TPM table). Returns (reasons, details); details also give how far that form
    is from the training form, on the warmup rows as requested and as requests of one domain
    each (one_domain): `fold_max_abs_diff`, reported, and `fold_moved_share`, the
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
    inputs += [one_domain(spec, features) for features in inputs]  # and as one-domain requests
    training = [model(features, training=False).numpy().ravel() for features in inputs]
    with serving_form(model) if isinstance(model, CtrModel) else contextlib.nullcontext():
        saved = [model(features, training=False).numpy().ravel() for features in inputs]
    replayed = zip(saved[:len(served)], served, strict=True)  # the warmup requests as sent
    diff = max(float(np.max(np.abs(e - np.asarray(a)))) for e, a in replayed)
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


def _scored_serving(serving_path: str | None, staging: str, held_out: Sequence[str], label: str,
                    split: HeldOut | None = None) -> dict | None:
    """score_serving of the serving version paired with the staged candidate; alone when the
    pair cannot be scored (a candidate that does not load fails the infra gate anyway); a
    serving version that cannot be scored is reported, and the candidate judged without it."""
    if not serving_path:
        return None
    errors = (tf.errors.OpError, OSError, ValueError, KeyError)
    try:
        return score_serving(serving_path, held_out, label, candidate=staging, split=split)
    except errors:
        pass
    try:
        serving = score_serving(serving_path, held_out, label, split=split)
        logger.warning(f"the staged candidate {staging} cannot be scored beside the serving "
                       f"version; comparing with unpaired intervals")
        return serving
    except errors as e:
        # A broken serving version must not block a good candidate: judged on its own.
        problem = " ".join(str(e).split())[:300]
        logger.warning(f"the serving version {serving_path} cannot be scored ({problem}); "
                       f"the candidate is judged without it")
        return {"path": serving_path, "auc": None, "unloadable": problem}


def run_gate(model: keras.Model, spec: Spec, staging: str, serving_path: str | None,
             held_out: Sequence[str], candidate: dict, config: GateConfig,
             split: HeldOut | None = None) -> dict:
    """Both gates. `candidate` holds the candidate's metrics on the held-out rows: the GZIP
    TFRecord files `held_out`, or only split's side of a request-id split of them (daily's
    evaluation share of D); the serving version and the staged candidate are scored on the
    same rows, streamed, for the paired comparisons. Returns the gate's report: passed,
    reasons, every metric check with whether it ran and why (metric_checks), the candidate's
    figures with their intervals, the serving version's and the infra details."""
    serving = _scored_serving(serving_path, staging, held_out, spec.label, split)
    checks = metric_checks(candidate, serving if serving and serving["auc"] is not None else None,
                           config)
    reasons = [check["reason"] for check in checks.values() if check.get("reason")]
    infra_reasons, infra = infra_gate(model, spec, staging, config)
    checks["infra"] = {"ran": True, "why": "warmup replay in a fresh process",
                       **({"reason": "; ".join(infra_reasons)} if infra_reasons else {})}
    reasons += infra_reasons
    report = {"passed": not reasons, "reasons": reasons, "checks": checks, "serving": serving,
              "infra": infra, "candidate_auc": candidate.get("auc"),
              "candidate": {key: candidate.get(key) for key in CANDIDATE_FIGURES}}
    skipped = [f"{name} ({check['why']})" for name, check in checks.items() if not check["ran"]]
    logger.info(f"gate: {'PASSED' if not reasons else 'REJECTED'}"
                + (f" vs serving AUC {serving['auc']:.4f}" if serving and serving["auc"] is not None
                   else " (serving version unloadable)" if serving else " (no serving version yet)")
                + (f", warmup replay max diff {infra['max_abs_diff']:.1e}" if infra else "")
                + (f"; not checked: {'; '.join(skipped)}" if skipped else "")
                + ("" if not reasons else ": " + "; ".join(reasons)))
    return report
