"""The export step: today's A-CTR is staged as a SavedModel (the TPM snapshots merged into one
table), gated against the serving version on D's held-out ad requests (the evaluation share the
A-CTR never trained on, or all of D when it did not learn from D) and on operational reasons
(data drift, a rollback in force), then published or rejected. A checkpoint that an interrupted
run already published or rejected is not exported again: every export carries the id of the
checkpoint it came from (assets.extra/actr.json)."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

import tensorflow as tf

from ecdctr.config import RunConfig
from ecdctr.data.datasets import HeldOut, partition_files
from ecdctr.data.drift import read_drift
from ecdctr.io import storage
from ecdctr.io.jsonio import DamagedFile, read_json_object, write_json
from ecdctr.models.ctr_model import CtrModel
from ecdctr.serving.export import (
    EXPORT_MARKER,
    REJECTED,
    TIMING_ROWS,
    held,
    publish,
    reject,
    stage_saved_model,
    versions,
)
from ecdctr.serving.gate import run_gate
from ecdctr.spec.feature_spec import Spec

logger = logging.getLogger(__name__)


@dataclass
class Candidate:
    """Today's A-CTR as the actr step leaves it: the model, its checkpoint folder and meta,
    its metrics on D's ad traffic, the ad days it learned from in this run, and the rows of D
    it is judged on (the evaluation share; None: all of D)."""

    model: CtrModel
    folder: str
    meta: dict
    metrics: dict
    trained_days: list[str] = field(default_factory=list)
    judged_on: HeldOut | None = None


def export_candidate(candidate: Candidate, config: RunConfig, spec: Spec, date: dt.date,
                     report: dict, entry: dict) -> None:
    """Stages the SavedModel, gates it against the serving version, publishes or rejects it
    (report["export"] or report["rejected"], report["gate"], report["published"])."""
    base = storage.join(config.export, "actr")
    if reuse_export(candidate, base, report, entry):
        return
    held_out = partition_files(config.work, "ad", [date])
    timing = [r.numpy() for r in
              tf.data.TFRecordDataset(held_out, compression_type="GZIP").take(TIMING_ROWS)]
    staging = stage_saved_model(candidate.model, spec, base, timing)  # its serving form
    serving = versions(base)
    gate = run_gate(candidate.model, spec, staging,
                    storage.join(base, str(serving[-1])) if serving else None, held_out,
                    candidate.metrics, config.gate, split=candidate.judged_on)
    for reason in operational_reasons(config, candidate.trained_days):
        gate["passed"] = False
        gate["reasons"].append(reason)
        logger.info(f"not publishing: {reason}")
    report["gate"] = entry["gate"] = gate
    write_json(storage.join(staging, "assets.extra", EXPORT_MARKER),
               {"date": date.isoformat(), "checkpoint": candidate.folder,
                "checkpoint_id": candidate.meta["id"], "gate": gate})
    if gate["passed"]:
        report["export"] = publish(staging, base, config.gate.keep_versions)
    else:
        report["rejected"] = reject(staging, base, gate["reasons"])
    report["published"] = gate["passed"]


def reuse_export(candidate: Candidate, base: str, report: dict, entry: dict) -> bool:
    """True when an interrupted run of the day already published or rejected this checkpoint:
    the report then says what that run's gate decided, and nothing is exported again."""
    done = exported(base, candidate.meta["id"])
    if not done:
        return False
    path, marker = done
    published = storage.dirname(path) == base
    logger.info(f"{path} was already exported from checkpoint {candidate.folder} by an "
                f"interrupted run of this day; not exporting again")
    entry["reused"] = path
    report["gate"] = entry["gate"] = marker["gate"]
    report["export" if published else "rejected"] = path
    report["published"] = published
    return True


def exported(base: str, checkpoint_id: str) -> tuple[str, dict] | None:
    """(path, marker) of the published or rejected export of a checkpoint, if there is one."""
    candidates = [storage.join(base, str(v)) for v in versions(base)]
    candidates += [storage.join(base, REJECTED, n) for n in storage.listdir(storage.join(base, REJECTED))]
    for path in candidates:
        marker = storage.join(path, "assets.extra", EXPORT_MARKER)
        if storage.exists(marker):
            try:
                body = read_json_object(marker)
            except DamagedFile as e:  # not this checkpoint's proof: it is exported again
                logger.warning(f"{e}: {path} is not taken as an earlier export of this day")
                continue
            if body.get("checkpoint_id") == checkpoint_id:
                return path, body
    return None


def operational_reasons(config: RunConfig, trained_days: list[str]) -> list[str]:
    """Reasons beyond the model gate not to publish today's candidate: data drift on the ad
    days the A-CTR learned in this run, and a rollback an operator put in force."""
    reasons = []
    drifted = {d: w for d in trained_days
               if (w := read_drift(config.work, "ad", dt.date.fromisoformat(d)))}
    if sum(len(w) for w in drifted.values()) > config.gate.max_drift:
        reasons.append(
            f"the A-CTR learned from days with data drift ({drifted}); gate.max_drift is "
            f"{config.gate.max_drift}. Fix: check those days' logs; rebuild them once "
            f"fixed, or raise gate.max_drift if the change is real")
    try:
        hold = held(storage.join(config.export, "actr"))
    except DamagedFile as e:  # safety state that cannot be read fails closed
        reasons.append(f"{e}; a rollback hold that cannot be read keeps new versions out. "
                       f"Fix: `ecdctr rollback --export={config.export} --release` if no rollback "
                       f"should be in force (or rewrite the file), and the next run publishes again")
        logger.error(reasons[-1])
        return reasons
    if hold:  # an operator rolled back: nothing new is served until they release it
        reasons.append(
            f"a rollback to version {hold['to']} (served as version {hold['version']}) is in "
            f"force since {hold['at']}. Fix: once the cause is fixed, `ecdctr rollback "
            f"--export={config.export} --release`, and the next run publishes again")
    return reasons
