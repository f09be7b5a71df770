"""The `compare` job: trains model variants on the same days and scores them on held-out days.

Variant names: `<backbone>[+<module>[:<form>][:<placement>][:domain][:<r_min>-<r_max>]]`, e.g.
`dnn`, `dcnv2`, `dnn+adasparse`, `dnn+adasparse:binarization`, `dnn+adasparse:output` (pruning
each layer's output instead of its input), `dnn+adasparse:domain` (pruners reading the domain
embedding alone), `dnn+adasparse:fusion:0.05-0.15`,
`dnn+star`, `dnn+apg`. Every variant of one seed sees the same training batches.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import time
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from ecdctr.config import RunConfig
from ecdctr.data.datasets import make_dataset, partition_files
from ecdctr.data.vocab import domain_sizes, traffic
from ecdctr.evaluation import metrics
from ecdctr.evaluation.evaluator import Evaluator
from ecdctr.evaluation.uncertainty import Z95
from ecdctr.io.jsonio import write_json
from ecdctr.io.layout import built_partitions
from ecdctr.models import sparsity
from ecdctr.models.adasparse import FORMS, PLACEMENTS, PRUNER_INPUTS
from ecdctr.models.ctr_model import BACKBONES, CtrModel, ModelConfig
from ecdctr.spec.feature_spec import Spec, load_spec
from pipelines import steps
from pipelines.ablations import ABLATIONS, FOCUS_GROUPS, TPM_PERIOD, Ablations, focus_rows
from pipelines.auto import auto_lines
from pipelines.build import build

logger = logging.getLogger(__name__)

BINS = 5
SUMMARY_KEYS = ("logloss", "auc", "gauc", "uplifted_domains", "examples_per_second")


def parse_variant(name: str, base: ModelConfig) -> ModelConfig:
    """The model config a variant name describes, on top of base's training settings."""
    backbone, _, module = name.partition("+")
    if backbone not in BACKBONES:
        raise ValueError(f"variant {name!r}: backbone {backbone!r} is not one of {list(BACKBONES)}")
    config = dataclasses.replace(base, backbone=backbone, multi_domain="none")
    if not module:
        return config
    kind, *options = module.split(":")
    if kind not in ("adasparse", "star", "apg"):
        raise ValueError(f"variant {name!r}: module {kind!r} is not adasparse, star or apg")
    if kind != "adasparse":
        if options:
            raise ValueError(f"variant {name!r}: only adasparse takes options")
        return dataclasses.replace(config, multi_domain=kind)
    ada = base.adasparse
    for option in options:
        if option in FORMS:
            ada = dataclasses.replace(ada, form=option)
        elif option in PLACEMENTS:
            ada = dataclasses.replace(ada, placement=option)
        elif option in PRUNER_INPUTS:
            ada = dataclasses.replace(ada, pruner_input=option)
        elif "-" in option:
            low, _, high = option.partition("-")
            try:
                ada = dataclasses.replace(ada, r_min=float(low), r_max=float(high))
            except ValueError:
                raise ValueError(f"variant {name!r}: band {option!r} is not "
                                 f"<r_min>-<r_max>") from None
        else:
            raise ValueError(f"variant {name!r}: option {option!r} is neither a form {list(FORMS)}, "
                             f"a placement {list(PLACEMENTS)}, a pruner input "
                             f"{list(PRUNER_INPUTS)} nor a sparsity band like 0.15-0.25")
    return dataclasses.replace(config, multi_domain="adasparse", adasparse=ada)


def run_compare(config: RunConfig, date: dt.date, variants: Sequence[str], out: str,
                eval_days: int = 1, source: str = "natural", seeds: int = 1,
                plots: str | None = None) -> dict:
    """Trains every variant with every seed, scores them on [date, date + eval_days), and
    writes `out` (JSON) and `out` with .md (a Markdown table)."""
    ablations = _checked_request(variants, source)
    spec = load_spec(config.spec)
    base = config.cpm if source == "natural" else config.actr
    # fail on a bad name before training
    configs = {v: parse_variant(v, base) for v in variants if v not in ABLATIONS}
    train_days, eval_dates = _built_days(config, spec, date, eval_days, source, bool(ablations))
    data = _Data(spec, config.work, source, train_days, eval_dates)
    logger.info(f"compare on {source}: train {train_days[0]}..{train_days[-1]} ({data.train_rows:,} rows), "
                f"eval {eval_dates[0]}..{eval_dates[-1]} ({data.eval_rows:,} rows), "
                f"{len(data.domains)} domains, {len(variants)} variants x {seeds} seeds")
    trainer = Ablations(config, spec, date) if ablations else None
    focus = trainer.focus_groups if trainer else {}
    runs, masks = _run_variants(config, data, variants, configs, seeds, trainer, focus)
    report = {
        "date": date.isoformat(), "source": source, "seeds": seeds, "variants": list(variants),
        "train_days": [train_days[0].isoformat(), train_days[-1].isoformat()],
        "eval_days": [d.isoformat() for d in eval_dates], "train_rows": data.train_rows,
        "eval_rows": data.eval_rows, "domains": len(data.domains),
        "bins": [{"domains": len(b), "train_rows": sum(data.domains[k] for k in b)}
                 for b in data.bins],
        "configs": {v: {"backbone": c.backbone, "multi_domain": c.multi_domain,
                        "form": c.adasparse.form, "placement": c.adasparse.placement,
                        "r_min": c.adasparse.r_min, "r_max": c.adasparse.r_max} for v, c in configs.items()},
        "focus_groups": {k: {"users": len(v), "description": FOCUS_GROUPS[k]}
                         for k, v in focus.items()},
        "results": {v: _aggregate(runs[v]) for v in variants},
        "runs": runs,
    }
    _write(report, masks, out, plots)
    return report


def _checked_request(variants: Sequence[str], source: str) -> list[str]:
    """The ablations among variants, once the request is known to make sense."""
    if source not in ("natural", "ad"):
        raise ValueError(f"--source must be natural or ad, got {source!r}")
    if not variants:
        raise ValueError("no variants given. Fix: e.g. --variants=dnn,dnn+adasparse")
    ablations = [v for v in variants if v in ABLATIONS]
    if ablations and source != "ad":
        raise ValueError(f"the ablations {ablations} train ad models: use --source=ad")
    return ablations


def _built_days(config: RunConfig, spec: Spec, date: dt.date, eval_days: int, source: str,
                ablations: bool) -> tuple[list[dt.date], list[dt.date]]:
    """(training days, evaluation days), built first (the ablations also read the natural
    windows, back to the oldest TPM snapshot's)."""
    window = config.windows.cpm_days if source == "natural" else config.windows.actr_days
    first = date - dt.timedelta(days=window)
    last = date + dt.timedelta(days=eval_days - 1)
    build(spec, config.logs, config.work, start=first, end=last, sources=[source],
          beam_args=config.beam_args, skip_built=True)
    if ablations:
        w, t = config.windows, config.transfer
        back = (w.actr_days + w.cpm_days + w.tpm_days
                + (t.tpm_snapshots - 1) * TPM_PERIOD[config.schedule.tpm])
        build(spec, config.logs, config.work, start=date - dt.timedelta(days=back),
              end=date - dt.timedelta(days=1), sources=["natural", "ad"],
              beam_args=config.beam_args, skip_built=True)
    built = built_partitions(config.work, source)
    train_days = [d for d in built if first <= d < date]
    eval_dates = [d for d in built if date <= d <= last]
    if not train_days or len(eval_dates) != eval_days:
        raise ValueError(f"compare needs {source} days {first}..{last}: found {len(train_days)} "
                         f"training and {len(eval_dates)} of {eval_days} evaluation days built.")
    return train_days, eval_dates


def _run_variants(config: RunConfig, data: _Data, variants: Sequence[str],
                  configs: dict[str, ModelConfig], seeds: int, trainer: Ablations | None,
                  focus: dict) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """Every variant trained and scored with every seed: (runs by variant, AdaSparse masks)."""
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    masks: dict[str, dict] = {}
    for seed in range(seeds):
        for name in variants:
            started = time.perf_counter()
            if name in ABLATIONS:
                model, train = trainer.train(name, seed)
            else:
                model, train = _train(data, dataclasses.replace(configs[name],
                                                                seed=config.seed + seed), name)
            result = _score(model, data, train, name, seed, focus)
            result["train_seconds"] = round(time.perf_counter() - started, 1)
            runs[name].append(result)
            if seed == 0 and model.config.multi_domain == "adasparse":
                masks[name] = _domain_masks(model, data)
        baseline = runs[variants[0]][seed]["per_domain_auc"]
        for name in variants:
            run = runs[name][seed]
            run["uplifted_domains"] = metrics.uplifted_share(run["per_domain_auc"], baseline)
    return runs, masks


def _write(report: dict, masks: dict[str, dict], out: str, plots: str | None) -> None:
    """The report as JSON at `out`, its table beside it (.md), and the plots when asked."""
    write_json(out, report)
    with open(_markdown_path(out), "w", encoding="utf-8") as f:
        f.write(markdown_table(report))
    logger.info(f"wrote {out} and {_markdown_path(out)}")
    if plots:
        from ecdctr.evaluation import plots as plotting

        written = plotting.write_all(report, masks, plots)
        logger.info(f"wrote plots: {', '.join(written)}")


class _Data:
    """The compare's data: the same files, vocabularies and domains for every variant."""

    def __init__(self, spec: Spec, work: str, source: str, train_days: list[dt.date],
                 eval_days: list[dt.date]):
        self.spec, self.work = spec, work
        parts = self.train_parts = [(source, d) for d in train_days]
        self.domains = domain_sizes(work, parts)
        self.bins = metrics.size_bins(self.domains, BINS)
        self.train_rows, self.ctr = traffic(work, parts)
        self.eval_rows = traffic(work, [(source, d) for d in eval_days])[0]
        self.eval_files = partition_files(work, source, eval_days)

    def eval(self, batch_size: int = 4096) -> tf.data.Dataset:
        return make_dataset(self.spec, self.eval_files, batch_size)


def _train(data: _Data, mc: ModelConfig, name: str) -> tuple[CtrModel, dict]:
    trained = steps.train_ctr(data.spec, data.work, data.train_parts, mc,
                              label=f"{name} seed {mc.seed}")
    return trained.model, trained.meta["train"]


def _score(model: CtrModel, data: _Data, train: dict, name: str, seed: int,
           focus: dict[str, set[str]]) -> dict:
    """Metrics of a trained model on the evaluation days (and on each focus group's rows),
    streamed through the evaluator daily uses."""
    groups = {group: Evaluator() for group in focus}

    def by_group(batch: dict[str, np.ndarray]) -> None:
        for group, users in focus.items():
            rows = focus_rows(batch["groups"], users)
            groups[group].add(**{k: v[rows] for k, v in batch.items()})

    try:
        result = steps.score(model, data.spec, data.eval(),
                             Evaluator(per_domain=True, domain_bins=data.bins), also=by_group)
        for group, evaluator in groups.items():
            result[group] = evaluator.result()
    finally:
        for evaluator in groups.values():
            evaluator.close()
    result["parameters"] = int(model.count_params())
    result["tpm_snapshots"] = model.tpm.snapshot_count if model.tpm is not None else 0
    result["tower_parameters"] = int(sum(np.prod(v.shape) for v in model.mlp.trainable_variables))
    result["examples_per_second"] = train["examples_per_second"]
    result["fit"] = {k: train[k] for k in ("chosen_epoch", "epochs_run", "validation_days",
                                           "validation_rows", "validation_clicks") if k in train}
    if "choice" in train:  # ecdctr-auto: the arm kept and the evidence (pipelines/auto.py)
        result["choice"] = train["choice"]
    if model.config.multi_domain == "adasparse":
        measured = sparsity.measure(model, data.eval(), data.bins)
        result["sparsity"], result["sparsity_bins"] = measured["layers"], measured["bins"]
    logger.info(f"{name} seed {seed}: AUC {result['auc']:.4f} GAUC {result['gauc']:.4f} "
                f"logloss {result['logloss']:.4f}, {result['examples_per_second']:,} ex/s"
        + (f", sparsity {result['sparsity']}" if "sparsity" in result else "")
        + "".join(f"; {group}: AUC {result[group]['auc']:.4f} over {result[group]['rows']:,} rows"
                  for group in focus))
    return result


def _eval_tower_inputs(model: CtrModel, data: _Data, max_batches: int = 8):
    for features, _ in data.eval().take(max_batches):
        yield model.tower_inputs(features)


def _domain_masks(model: CtrModel, data: _Data) -> dict:
    """Per domain (by its index in data.domains): the keep rate of each neuron of every layer."""
    sums: dict[int, list[np.ndarray]] = {}
    counts: dict[int, int] = {}
    for x, e_d, index, _ in _eval_tower_inputs(model, data):
        layer_masks = [m.numpy() for m in model.mlp.masks(x, e_d)]
        for d in np.unique(index.numpy()):
            rows = index.numpy() == d
            part = [m[rows].sum(axis=0) for m in layer_masks]
            sums[int(d)] = part if int(d) not in sums else [
                a + b for a, b in zip(sums[int(d)], part, strict=True)]
            counts[int(d)] = counts.get(int(d), 0) + int(rows.sum())
    names = ["<unseen>", *model.domains]  # the model's own domain index
    return {names[d]: {"rows": counts[d], "keep_rate": [(s / counts[d]).tolist() for s in sums[d]]}
            for d in sums}


def _aggregate(runs: list[dict]) -> dict:
    """Mean and standard deviation over seeds of the headline numbers, bins and sparsity."""
    out: dict = {}
    for key in (*SUMMARY_KEYS, "parameters", "tower_parameters", "train_seconds",
                *(f"{g}_{m}" for g in FOCUS_GROUPS for m in ("auc", "gauc"))):
        values = np.array([_value(r, key) for r in runs], dtype=float)
        finite = values[~np.isnan(values)]
        out[key] = {"mean": float(finite.mean()) if finite.size else None,
                    "std": float(finite.std()) if finite.size else None}
    out["bins_auc"] = [_nanmean([r["bins"][b]["auc"] for r in runs])
                       for b in range(len(runs[0]["bins"]))]
    if "sparsity" in runs[0]:
        out["sparsity"] = np.mean([r["sparsity"] for r in runs], axis=0).round(4).tolist()
        out["sparsity_bins"] = [_mean_shares([r["sparsity_bins"][b] for r in runs])
                                for b in range(len(runs[0]["sparsity_bins"]))]
    out["noise"] = _noise(runs)
    out["tpm_snapshots"] = min(int(r.get("tpm_snapshots", 0)) for r in runs)
    return out


def _noise(runs: list[dict]) -> dict:
    """Mean over seeds of what the evaluation rows can tell (NaN where no run says): the
    clicks, the standard errors of AUC and GAUC (overall and per focus group), the calibration
    ratio (predicted over observed clicks) and the calibration error."""
    parts = {"": runs, **{f"{g}_": [r.get(g) or {} for r in runs] for g in FOCUS_GROUPS}}
    return {prefix + key: _nanmean([float(r.get(key, float("nan"))) for r in rows])
            for prefix, rows in parts.items()
            for key in ("clicks", "auc_se", "gauc_se", "calibration_ratio", "calibration_error")}


def _mean_shares(shares: list[list[float] | None]) -> list[float] | None:
    """Per layer, the mean over seeds of a bin's sparsity (None where no seed saw the bin)."""
    seen = [s for s in shares if s]
    return np.mean(seen, axis=0).round(4).tolist() if seen else None


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _value(run: dict, key: str) -> float:
    group, _, metric = key.rpartition("_")
    if group in FOCUS_GROUPS:
        part = run.get(group)
        return part[metric] if part else float("nan")
    return run[key]


def _fmt(stat: dict, digits: int = 4) -> str:
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _with_noise(report: dict, name: str, key: str) -> str:
    """"0.7123 ± 0.0010 (±0.0120)": mean ± std over seeds, then the 95% half-width of the
    evaluation rows' noise; "tie" when it differs from the first variant by less than the
    noise of the difference (the two standard errors added: unpaired, so it leans to tie)."""
    results = report["results"]
    stat, noise = results[name][key], results[name].get("noise", {})
    text = _fmt(stat)
    se = noise.get(f"{key}_se", float("nan"))
    if stat["mean"] is None or not np.isfinite(se):
        return text
    text += f" (±{Z95 * se:.4f})"
    first = next(iter(results))
    base, base_se = results[first][key]["mean"], results[first].get("noise", {}).get(
        f"{key}_se", float("nan"))
    if name != first and base is not None and np.isfinite(base_se):
        if abs(stat["mean"] - base) < Z95 * float(np.hypot(se, base_se)):
            text += " tie"
    return text


def _calibration_cell(result: dict) -> str:
    noise = result.get("noise", {})
    ratio, error = noise.get("calibration_ratio", float("nan")), noise.get(
        "calibration_error", float("nan"))
    if not np.isfinite(ratio):
        return "n/a"
    return f"{ratio:.2f}" + (f" / {error:.4f}" if np.isfinite(error) else "")


def _label(name: str, result: dict) -> str:
    """The variant's name, said plainly when an E-CDCTR variant ran without a TPM snapshot
    (the TPM's windows held no built day): it is then not the method its name says."""
    if _tpm_missing(name, result):
        return f"{name} WITHOUT TPM (no snapshot)"
    return name


def _tpm_missing(name: str, result: dict) -> bool:
    return (name in ABLATIONS and name.startswith("ecdctr") and "no_tpm" not in name
            and result.get("tpm_snapshots") == 0)


def markdown_table(report: dict) -> str:
    """The compare report as Markdown tables: mean ± std over seeds, the 95% noise of the
    evaluation rows in brackets, ties with the first variant marked."""
    clicks = next(iter(report["results"].values())).get("noise", {}).get("clicks", float("nan"))
    lines = [f"Compare on {report['source']} traffic: train {report['train_days'][0]}.."
             f"{report['train_days'][1]} ({report['train_rows']:,} rows), evaluated on "
             f"{', '.join(report['eval_days'])} ({report['eval_rows']:,} rows"
             + (f", {clicks:,.0f} clicks" if np.isfinite(clicks) else "")
             + f"), {report['domains']} domains, {report['seeds']} seed(s).", "",
             "AUC and GAUC: mean ± std over seeds (± the 95% half-width of the evaluation rows' "
             "noise: DeLong for AUC, users for GAUC); tie: differs from "
             f"{next(iter(report['results']))} by less than the noise of the difference. "
             "Calibration: predicted over observed clicks / expected calibration error "
             "(docs/quality.md).", "",
             "| variant | AUC | GAUC | LogLoss | calibration | uplifted domains | params "
             "| tower params | train ex/s | train s | sparsity per layer |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["results"].items():
        lines.append(f"| {_label(name, r)} | {_with_noise(report, name, 'auc')} | "
                     f"{_with_noise(report, name, 'gauc')} | {_fmt(r['logloss'])} | "
                     f"{_calibration_cell(r)} | "
                     f"{_fmt(r['uplifted_domains'], 2)} | {r['parameters']['mean']:,.0f} | "
                     f"{r['tower_parameters']['mean']:,.0f} | "
                     f"{r['examples_per_second']['mean']:,.0f} | "
                     f"{r['train_seconds']['mean']:,.0f} | {r.get('sparsity', '')} |")
    missing = [name for name, r in report["results"].items() if _tpm_missing(name, r)]
    if missing:
        lines += ["", f"{', '.join(missing)} ran without a TPM snapshot: the TPM's windows held no "
                      f"built natural day (e.g. windows covering the whole history with "
                      f"transfer.tpm_historical), so these rows are not E-CDCTR with its TPM."]
    lines += auto_lines(report)
    for group, info in report.get("focus_groups", {}).items():
        lines += ["", f"On the {info['users']:,} {info['description']}:", "",
                  "| variant | AUC | GAUC |", "|---|---|---|"]
        lines += [f"| {name} | {_with_noise(report, name, group + '_auc')} | "
                  f"{_with_noise(report, name, group + '_gauc')} |"
                  for name in report["results"]]
    bins = report["bins"]
    lines += ["", "AUC by domain-size bin (equal training rows per bin, largest domains first):", "",
              "| variant | " + " | ".join(f"bin {i + 1} ({b['domains']} domains)"
                                         for i, b in enumerate(bins)) + " |",
              "|---|" + "---|" * len(bins)]
    for name, r in report["results"].items():
        lines.append(f"| {name} | " + " | ".join(f"{a:.4f}" for a in r["bins_auc"]) + " |")
    return "\n".join(lines + _sparsity_lines(report)) + "\n"


def _sparsity_lines(report: dict) -> list[str]:
    """The AdaSparse variants' achieved sparsity per layer, overall and per domain-size bin."""
    pruned = {n: r for n, r in report["results"].items() if r.get("sparsity_bins")}
    if not pruned:
        return []
    bins = report["bins"]
    lines = ["", "Sparsity per layer (share of pruned factors on the evaluation rows, layer 0 "
                 "first), overall and by domain-size bin:", "",
             "| variant | band | overall | " + " | ".join(f"bin {i + 1}" for i in range(len(bins)))
             + " |", "|---|---|---|" + "---|" * len(bins)]
    for name, r in pruned.items():
        c = report["configs"][name]
        cells = ["/".join(f"{v:.2f}" for v in s) if s else "n/a"
                 for s in (r["sparsity"], *r["sparsity_bins"])]
        lines.append(f"| {name} | {c['r_min']:.2f}–{c['r_max']:.2f} | " + " | ".join(cells) + " |")
    return lines


def _markdown_path(out: str) -> str:
    root, ext = os.path.splitext(out)
    return (root if ext == ".json" else out) + ".md"
