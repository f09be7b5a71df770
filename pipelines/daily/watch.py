"""The watch step: the version being served, scored out of time on the new day's ad traffic
(all of D, through its SavedModel's serving_default) before today's candidate can replace it,
recorded in the day's report under `served` and added to the served model's history
(TensorBoard scalars under <work>/boards/served, the PNG <work>/reports/served.png)."""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import tensorflow as tf

from ecdctr.data.datasets import feature_description, partition_files
from ecdctr.evaluation import history
from ecdctr.evaluation.evaluator import Evaluator
from ecdctr.io import storage
from ecdctr.serving.export import SPEC_FILE, describe_versions
from ecdctr.serving.gate import score_saved_model
from ecdctr.spec.feature_spec import Spec, load_spec
from pipelines.daily.report import figures_line

logger = logging.getLogger(__name__)
BATCH_SIZE = 4096


def served_version(base: str, date: dt.date) -> int | None:
    """The version serving when the run of `date` begins: the newest published one exported
    by the run of an earlier day (a forced rerun of a day that already published does not
    watch its own model, which is not out of time on that day)."""
    if not storage.isdir(base):
        return None
    earlier = [row["version"] for row in describe_versions(base)
               if row["date"] is None or row["date"] < date.isoformat()]
    return earlier[-1] if earlier else None


def served_spec(path: str, fallback: Spec) -> Spec:
    """The spec a published version was exported with (its assets.extra/spec.yaml), else
    `fallback`: it names the user-id feature and the domain keys of the rows it is scored on."""
    saved = storage.join(path, "assets.extra", SPEC_FILE)
    return load_spec(saved) if storage.exists(saved) else fallback


def _groups_and_domains(spec: Spec, files: list[str], batch_size: int
                        ) -> tuple[tf.data.Dataset, list[str]]:
    """The files' user ids and domain keys (the domain features' values joined by '|', as
    training.loop.scored_batches does), batch by batch in the order score_saved_model reads."""
    by_name = {f.name: f for f in spec.features}
    columns = [by_name[spec.group_by].column] + [f.column for f in spec.domain_features]
    every = feature_description(spec, with_label=False)
    description = {c: every[c] for c in dict.fromkeys(columns)}
    batches = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(batch_size).map(
        lambda serialized: tf.io.parse_example(serialized, description))
    return batches, columns


def score_served(path: str, spec: Spec, files: list[str], batch_size: int = BATCH_SIZE) -> dict:
    """The evaluator's figures (AUC, GAUC, LogLoss, calibration, with clicks and intervals,
    overall and per domain) of the SavedModel at `path` on the files' Examples, streamed."""
    parsed, columns = _groups_and_domains(spec, files, batch_size)
    user, domain_columns = columns[0], columns[1:]
    with Evaluator(per_domain=True) as evaluator:
        scored = score_saved_model(path, files, spec.label, batch_size)
        for (labels, probs), batch in zip(scored, parsed, strict=True):
            if domain_columns:
                domains = tf.strings.join([batch[c] for c in domain_columns], separator="|")
                domains = domains.numpy().astype(str)
            else:
                domains = np.full(len(labels), "all")
            evaluator.add(labels=labels, probs=np.ravel(probs), groups=batch[user].numpy(),
                          domains=domains)
        return evaluator.result()


def watch_served(entry: dict, report: dict, export: str, work: str, spec: Spec, date: dt.date
                 ) -> None:
    """Scores the version being served (served_version, under <export>/actr) on D's ad
    traffic into report["served"] and the step's entry, and refreshes the served model's
    history; skipped (the entry says why) while no earlier day's run has published."""
    base = storage.join(export, "actr")
    version = served_version(base, date)
    if version is None:
        entry.update(status="skipped", reason=f"no version under {base} published by a run "
                                              f"of a day before {date}")
        return
    path = storage.join(base, str(version))
    files = partition_files(work, "ad", [date])
    if not files:
        raise FileNotFoundError(f"no built ad examples of {date} under {work}")
    figures = score_served(path, served_spec(path, spec), files)
    report[history.SERVED] = {"version": version, "path": path, **figures}
    entry.update(version=version, path=path, rows=figures["rows"], clicks=figures["clicks"])
    logger.info(f"served version {version} on ad {date} ({figures['rows']:,} rows, "
                f"{figures['clicks']:,} clicks): {figures_line(figures)}")
    row = {"date": date.isoformat(), **report[history.SERVED]}
    history.write_tensorboard([row], storage.join(work, "boards", "served"))
    series = history.served_series(work, end=date - dt.timedelta(days=1)) + [row]
    entry["png"] = history.write_png(series, storage.join(work, "reports", "served.png"))
