"""Settings the data chooses (`transfer.tpm: auto`, `model.multi_domain: auto`): the weekly
derivation trains one arm per value on the same days, scores every arm's A-CTR on the same
validation share (the one its fits stop early on, pipelines/held_out.choose_validation), keeps
the simplest arm unless a more complex one validates better by a clear margin (the 95%
interval of the paired DeLong AUC difference lies above zero), and returns the evidence:
each arm's AUC with its interval and clicks, each difference with its interval, the choice
and why. `daily` and `compare`'s `ecdctr-auto` both choose through `choose`."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import tensorflow as tf

from ecdctr.config import RunConfig, TransferConfig
from ecdctr.data.datasets import make_dataset
from ecdctr.data.vocab import Partition
from ecdctr.evaluation.evaluator import Evaluator
from ecdctr.evaluation.uncertainty import PairedAuc, interval
from ecdctr.io import storage
from ecdctr.models.ctr_model import CtrModel, ModelConfig
from ecdctr.spec.feature_spec import Spec
from ecdctr.training.checkpoint import META, Checkpoint, Snapshot, load_checkpoint, save_checkpoint
from ecdctr.training.distribute import Distribution
from pipelines import steps
from pipelines.held_out import Evaluation, Validation, files_of, split

logger = logging.getLogger(__name__)

AUTO_MULTI_DOMAIN = ("none", "adasparse")  # model.multi_domain: auto chooses between these


@dataclass(frozen=True)
class Arm:
    """One combination of the auto settings' values: with or without TPM features, and the
    tower's multi_domain module."""

    tpm: bool
    multi_domain: str = "none"

    @property
    def name(self) -> str:
        """e.g. "tpm", "no_tpm", "tpm+adasparse"."""
        return ("tpm" if self.tpm else "no_tpm") + (
            f"+{self.multi_domain}" if self.multi_domain != "none" else "")

    def model(self, config: ModelConfig) -> ModelConfig:
        """A CPM or A-CTR config of this arm."""
        return dataclasses.replace(config, multi_domain=self.multi_domain)

    def transfer(self, options: TransferConfig) -> TransferConfig:
        """The transfer options of this arm (no TPM: no snapshot read)."""
        return options if self.tpm else dataclasses.replace(options, tpm_snapshots=0)


def arms(config: RunConfig) -> list[Arm]:
    """The arms the config's auto settings span, simplest first (no TPM before TPM, no
    multi_domain module before one); one arm, the configured one, when nothing is auto."""
    tpm = ((False, True) if "transfer.tpm" in config.auto
           else (config.transfer.tpm_snapshots > 0,))
    domains = (AUTO_MULTI_DOMAIN if "model.multi_domain" in config.auto
               else (config.actr.multi_domain,))
    return sorted((Arm(t, d) for t in tpm for d in domains),
                  key=lambda a: (a.multi_domain != "none", a.tpm))


def choose(models: Mapping[str, CtrModel], spec: Spec, work: str,
           validation: Validation | None, settings: Sequence[str], batch_size: int = 4096
           ) -> dict:
    """The arm to keep among models (arm name -> A-CTR, simplest first), with the evidence:
    {"settings", "validation", "arms": {name: figures}, "comparisons": [...], "chosen",
    "reason"}. The choice starts at the simplest arm; each other arm, in order, replaces the
    current choice when the 95% interval of its paired AUC difference against it lies above
    zero. Without validation evidence the simplest arm is kept, and the reason says so."""
    names = list(models)
    evidence: dict = {"settings": list(settings), "validation": None, "arms": {},
                      "comparisons": [], "chosen": names[0]}
    if validation is None:
        evidence["reason"] = (f"no validation evidence (validation_share 0, or the share held "
                              f"no click or only clicks): the simplest arm {names[0]} is kept")
        logger.warning(f"auto {', '.join(settings)}: {evidence['reason']}")
        return evidence
    evidence["validation"] = {"days": [d.isoformat() for _, d in validation.days],
                              "share": validation.share, "rows": validation.rows,
                              "clicks": validation.clicks}
    figures, pairs = _scored(models, spec, work, validation, batch_size)
    evidence["arms"] = figures
    evidence["chosen"], evidence["comparisons"] = decide(names, pairs)
    evidence["reason"] = _reason(evidence, names[0])
    logger.info(f"auto {', '.join(settings)}: {evidence['reason']}")
    return evidence


def decide(names: Sequence[str], pairs: Mapping[tuple[str, str], dict]
           ) -> tuple[str, list[dict]]:
    """(the arm kept, the comparisons made) from the paired AUC differences (pairs[a, b]:
    uncertainty.PairedAuc's result of a against b): the simplest arm (names[0]) first; each
    other arm, in order, replaces the current choice when the 95% interval of its difference
    against it lies above zero. A tie, or an undefined difference, keeps the current one."""
    current, comparisons = names[0], []
    for name in names[1:]:
        paired = pairs[name, current]
        difference = _finite(paired["auc_difference"])
        span = (interval(difference, paired["difference_variance"], -1.0, 1.0)
                if difference is not None else None)
        better = span is not None and span[0] > 0
        comparisons.append({"arm": name, "against": current, "auc_difference": difference,
                            "interval": span, "better": better})
        if better:
            current = name
    return current, comparisons


def _scored(models: Mapping[str, CtrModel], spec: Spec, work: str, validation: Validation,
            batch_size: int) -> tuple[dict, dict]:
    """Every model scored on the validation rows in one pass (the same rows, in the same
    order): ({name: AUC, interval, clicks, rows, LogLoss}, {(a, b): PairedAuc result of a
    against b for every later a})."""
    rows = make_dataset(spec, files_of(work, validation.days), batch_size,
                        held_out=split(spec, work, True, validation))
    names = list(models)
    steps = {n: tf.function(lambda x, m=models[n]: m(x, training=False),
                            input_signature=[rows.element_spec[0]]) for n in names}
    evaluators = {n: Evaluator() for n in names}
    pairs = {(a, b): PairedAuc() for i, a in enumerate(names) for b in names[:i]}
    try:
        for features, label in rows:
            labels = label.numpy().ravel()
            groups = features[spec.group_by].numpy()
            probs = {n: steps[n](features).numpy().ravel() for n in names}
            for n in names:
                evaluators[n].add(labels, probs[n], groups)
            for (a, b), paired in pairs.items():
                paired.add(labels, probs[a], probs[b])
        figures = {}
        for n in names:
            r = evaluators[n].result()
            figures[n] = {"auc": _finite(r["auc"]), "auc_ci": r["auc_ci"], "clicks": r["clicks"],
                          "rows": r["rows"], "logloss": _finite(r["logloss"])}
    finally:
        for evaluator in evaluators.values():
            evaluator.close()
    return figures, {key: paired.result() for key, paired in pairs.items()}


def _reason(evidence: dict, simplest: str) -> str:
    """Why the chosen arm was kept, in one sentence with its figures."""
    v, parts = evidence["validation"], []
    for c in evidence["comparisons"]:
        span = c["interval"]
        figure = ("an undefined difference" if c["auc_difference"] is None else
                  f"{c['auc_difference']:+.4f} AUC (95% interval "
                  + ("undefined" if span is None else f"{span[0]:+.4f}..{span[1]:+.4f}") + ")")
        parts.append(f"{c['arm']} against {c['against']}: {figure}, "
                     + ("better by a clear margin" if c["better"] else "not clearly better"))
    chosen = evidence["chosen"]
    verdict = (f"{chosen} kept: it validates better by a clear margin" if chosen != simplest
               else f"the simpler arm {simplest} kept: no other arm validates clearly better")
    return (f"{verdict} ({'; '.join(parts)}; paired DeLong on {v['rows']:,} validation rows, "
            f"{v['clicks']:,} clicks of {len(v['days'])} day(s))")


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def evidence_lines(evidence: dict) -> list[str]:
    """The evidence as Markdown: one table row per arm, then the choice and why."""
    lines = ["| arm | validation AUC (95% interval) | clicks | rows | LogLoss |",
             "|---|---|---|---|---|"]
    for name, f in evidence["arms"].items():
        ci = f["auc_ci"]
        auc = "n/a" if f["auc"] is None else f"{f['auc']:.4f}" + (
            f" ({ci[0]:.4f}..{ci[1]:.4f})" if ci else "")
        logloss = "n/a" if f["logloss"] is None else f"{f['logloss']:.4f}"
        lines.append(f"| {name}{' (chosen)' if name == evidence['chosen'] else ''} | {auc} | "
                     f"{f['clicks']:,} | {f['rows']:,} | {logloss} |")
    return lines + ["", f"Choice: {evidence['reason']}."]


def auto_lines(report: dict) -> list[str]:
    """compare's Markdown for its auto variants: per seed, each arm's validation figures, the
    arm kept and why (empty when no variant chose)."""
    lines: list[str] = []
    for name, runs in report.get("runs", {}).items():
        for seed, run in enumerate(runs):
            if "choice" in run:
                lines += ["", f"{name} seed {seed}: the weekly derivation's choice "
                              f"({', '.join(run['choice']['settings'])}: auto) on its "
                              f"validation share:", "", *evidence_lines(run["choice"])]
    return lines


# -- the daily job's weekly derivation ---------------------------------------------------------
def cpm_arms(config: RunConfig) -> tuple[Arm, list[Arm]]:
    """(the arm of the CPM folder itself, the other arms the CPM step trains beside it): the
    CPM folder holds the configured arm (the TPM on with tpm_snapshots, multi_domain none)."""
    main = Arm(config.transfer.tpm_snapshots > 0, config.cpm.multi_domain)
    return main, [a for a in arms(config) if a != main]


def train_cpm_arms(config: RunConfig, spec: Spec, natural: Sequence[Partition],
                   snapshots: Sequence[Snapshot], vocab_parts: Sequence[Partition],
                   main_folder: str, arms_root: str, meta: dict, parent: Checkpoint | None,
                   board: str, distribution: Distribution | None = None) -> dict:
    """The other arms' CPMs of a weekly CPM (auto settings), each trained on the same natural
    days as the CPM of main_folder, warm from the same arm of the parent CPM when it has one
    (else from the parent), saved under <arms_root>/<arm>; returns meta["arms"] of the main
    CPM: {arm name: {"tpm", "multi_domain", "folder"}}, simplest first."""
    main, others = cpm_arms(config)
    folders = {main: main_folder}
    for arm in others:
        previous = (parent.meta.get("arms") or {}).get(arm.name) if parent else None
        source = (load_checkpoint(previous["folder"], arm.model(config.cpm))
                  if previous and storage.exists(storage.join(previous["folder"], META)) else parent)
        logger.info(f"CPM arm {arm.name} (auto {', '.join(config.auto)}) on the same "
                    f"{len(natural)} natural days" + (f", warm from {source.folder}" if source else ""))
        trained = steps.train_ctr(spec, config.work, natural, arm.model(config.cpm), kind="cpm",
                                  snapshots=snapshots if arm.tpm else (),
                                  vocab_parts=vocab_parts, stats_parts=natural, parent=source,
                                  board=storage.join(board, arm.name), label=f"cpm {arm.name}",
                                  distribution=distribution)
        folders[arm] = storage.join(arms_root, arm.name)
        save_checkpoint(folders[arm], trained.model, spec, trained.vocabs,
                        {**trained.meta, **{k: meta[k] for k in ("period", "schedule")},
                         "id": f"{meta['id']}/{arm.name}", "arm": arm.name},
                        trained.snapshots)
    return {a.name: {"tpm": a.tpm, "multi_domain": a.multi_domain, "folder": folders[a]}
            for a in sorted(folders, key=lambda a: (a.multi_domain != "none", a.tpm))}


def prune_cpm_arms(arms_root: str, kept: set[str]) -> None:
    """Removes the arm folders of CPMs no longer kept (their names are the CPM folders')."""
    for name in storage.listdir(arms_root):
        if name not in kept:
            storage.rmtree(storage.join(arms_root, name))
            logger.info(f"removed old CPM arms {storage.join(arms_root, name)}")


def derive_chosen(cpm: Checkpoint, config: RunConfig, spec: Spec, days: Sequence[dt.date],
                  vocab_parts: Sequence[Partition], fresh_features: Sequence[str], board: str,
                  distribution: Distribution | None = None,
                  evaluation: Evaluation | None = None) -> steps.Trained:
    """The weekly derivation with auto settings: an A-CTR derived from each arm's CPM
    (cpm.meta["arms"]) on the same ad days, the one kept that validates better by a clear
    margin (choose); its meta gets "arm" (name, settings, its CPM's folder) and "choice" (the
    evidence), which the daily updates carry until the next derivation."""
    derived: dict[str, steps.Trained] = {}
    for name, info in cpm.meta["arms"].items():
        arm = Arm(info["tpm"], info["multi_domain"])
        source = cpm if info["folder"] == cpm.folder else load_checkpoint(
            info["folder"], arm.model(config.cpm))
        logger.info(f"A-CTR arm {name} derived from CPM {source.folder}")
        derived[name] = steps.derive_actr(source, spec, config.work, days, arm.model(config.actr),
                                          arm.transfer(config.transfer), vocab_parts=vocab_parts,
                                          fresh_features=fresh_features,
                                          board=storage.join(board, name),
                                          distribution=distribution, evaluation=evaluation)
    validation = steps.validation_of(spec, config.work, [("ad", d) for d in days], config.actr)
    evidence = choose({n: t.model for n, t in derived.items()}, spec, config.work, validation,
                      config.auto)
    chosen = evidence["chosen"]
    trained = derived[chosen]
    trained.meta.update(arm={"name": chosen, **cpm.meta["arms"][chosen]}, choice=evidence)
    return trained


def arm_config(meta: dict, config: ModelConfig) -> ModelConfig:
    """The model config of the arm an A-CTR's meta names (config itself when it has none):
    a daily update keeps the arm the weekly derivation chose."""
    arm = meta.get("arm")
    return config if not arm else Arm(arm["tpm"], arm["multi_domain"]).model(config)
