"""The A-CTR's validated daily update: an update is kept only if it does not validate worse
than the model it starts from, judged on the same held-out rows (paired DeLong interval)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from ecdctr.data.datasets import make_dataset
from ecdctr.data.vocab import Partition
from ecdctr.evaluation.metrics import auc
from ecdctr.evaluation.uncertainty import Z95, PairedAuc
from ecdctr.models.ctr_model import CtrModel, ModelConfig
from ecdctr.spec.feature_spec import Spec
from ecdctr.training.loop import scored_batches
from pipelines.held_out import Validation, choose_validation, files_of, split

logger = logging.getLogger(__name__)


def scores_on(model: CtrModel, spec: Spec, dataset: tf.data.Dataset
              ) -> tuple[np.ndarray, np.ndarray]:
    """(labels, click probabilities) of the model on every row of dataset (raw features)."""
    batches = list(scored_batches(model, spec, dataset))
    return (np.concatenate([b["labels"] for b in batches]),
            np.concatenate([b["probs"] for b in batches]))


def verdict(labels: np.ndarray, before: np.ndarray, after: np.ndarray) -> dict:
    """The check of an update on held-out rows: both AUCs, their paired difference (after -
    before) with its 95% interval, and what is kept: "previous" when the interval lies below
    0 (the update validates worse beyond noise), else "update" (a tie keeps the newer day)."""
    paired = PairedAuc()
    paired.add(labels, after, before)
    result = paired.result()
    difference, variance = result["auc_difference"], result["difference_variance"]
    half = Z95 * math.sqrt(variance) if math.isfinite(variance) else math.nan
    worse = math.isfinite(difference) and math.isfinite(half) and difference + half < 0
    return {"rows": int(len(labels)), "clicks": result["clicks"],
            "auc_start": auc(labels, before), "auc_updated": auc(labels, after),
            "auc_difference": difference, "ci": [difference - half, difference + half],
            "kept": "previous" if worse else "update"}


def validated_update(model: CtrModel, spec: Spec, work: str, parts: Sequence[Partition],
                     config: ModelConfig, fit: Callable[[Validation], dict], name: str
                     ) -> dict | None:
    """An update validated by evidence: its validation (choose_validation: the config's share
    of the newest of parts' requests, grown back to its click minimum), fit(validation) (the
    update's fit, early stopping on it) and the check kept_if_not_worse; None when parts hold
    no click to validate on (the caller trains without validation)."""
    validation = choose_validation(spec, work, parts, config.validation_share,
                                   config.validation_min_clicks)
    if validation is None:
        logger.info(f"[{name}] no held-out click to validate the update on: trained without")
        return None
    held = make_dataset(spec, files_of(work, validation.days), config.batch_size,
                        held_out=split(spec, work, True, validation))
    return kept_if_not_worse(model, spec, held, lambda: fit(validation), name)


def kept_if_not_worse(model: CtrModel, spec: Spec, held: tf.data.Dataset,
                      fit: Callable[[], dict], name: str) -> dict:
    """Runs fit (which trains model and returns its summary), scoring model on held (the
    fit's validation rows, raw features) before and after; when the update validates worse
    (verdict), the starting weights are put back. Returns the summary with its
    "update_check" (verdict)."""
    start = model.get_weights()
    labels, before = scores_on(model, spec, held)
    summary = fit()
    check = verdict(labels, before, scores_on(model, spec, held)[1])
    summary["update_check"] = check
    described = (f"validation AUC {check['auc_updated']:.4f} after the update against "
                 f"{check['auc_start']:.4f} before, difference {check['auc_difference']:+.4f} "
                 f"[{check['ci'][0]:+.4f}, {check['ci'][1]:+.4f}] on {check['rows']:,} rows, "
                 f"{check['clicks']:,} clicks")
    if check["kept"] == "previous":
        model.set_weights(start)
        logger.warning(f"[{name}] the update validates worse than the model it starts from "
                       f"({described}): the previous weights are kept")
    else:
        logger.info(f"[{name}] update kept: {described}")
    return summary
