"""The training recipe against a grid tuned by hand: epochs x batch size x learning rate.

On each world (one folder per simulator seed or real-log conversion, holding logs/ and work/ as
`ecdctr simulate` (or benchmarks/real_logs.py) and `ecdctr build` write them) a model is trained
on the `--window` days before `--date` and scored on the `--eval_days` days from it, with the same
code `compare` and `daily` run (pipelines.steps):
  --source natural  a plain model of natural traffic (the CPM's role; train_ctr);
  --source ad       a plain model of ad traffic trained from scratch (train_ctr);
  --source actr     the A-CTR: a CPM is trained once per world by its shipped recipe on the
                    --cpm_window natural days before --date, and each fit derives the A-CTR
                    from it on the ad days (derive_actr: weights by name, BatchNorm reset, prior
                    shift as the run config's transfer section says).
Per fit:
  grid    every batch size x learning rate for a fixed number of epochs, no validation; the
          model after each epoch is scored too (BatchNorm re-estimated as the steps do after
          a fit), so one fit of --max_epochs gives every epoch count of the grid;
  recipe  the run config's own settings (--config, default configs/demo.yaml: its `cpm`
          section for natural traffic, `actr` for ad traffic): validation share by request-id
          hash sized by its clicks, early stopping, the best epoch kept.
Writes <out>.json (every figure) and <out>.md (the table).

    nice -n 10 .venv/bin/python benchmarks/recipe_grid.py --worlds /tmp/w101 /tmp/w102 \
        /tmp/w103 --date 2026-03-15 --out benchmarks/results/recipe_grid
    nice -n 10 .venv/bin/python benchmarks/recipe_grid.py --source actr --spec \
        benchmarks/real_logs.yaml --worlds /tmp/real --date 2017-07-01 --eval_days 5 ...
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import sys
import tempfile
from collections.abc import Callable

import numpy as np
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# ruff: noqa: I001  (keep `import ecdctr` ahead of TensorFlow, whatever the import sorter wants)
import ecdctr  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tf_keras as keras  # noqa: E402

from ecdctr.config import RunConfig, load_config  # noqa: E402
from ecdctr.data.vocab import traffic  # noqa: E402
from ecdctr.models.ctr_model import ModelConfig  # noqa: E402
from ecdctr.spec.feature_spec import Spec, load_spec  # noqa: E402
from ecdctr.training.loop import recalibrate_batchnorm  # noqa: E402
from pipelines import steps  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
Partition = tuple[str, dt.date]


class ScoreEachEpoch(keras.callbacks.Callback):
    """After each epoch: BatchNorm re-estimated on the training rows (as train_ctr does after a
    fit), the model scored on the evaluation days, then the training state put back."""

    def __init__(self, spec: Spec, work: str, train: list[Partition], evaluation: list[Partition],
                 config: ModelConfig):
        super().__init__()
        self.spec, self.work, self.train, self.evaluation = spec, work, train, evaluation
        self.config, self.scores = config, []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        saved = [v.numpy() for v in self.model.variables]
        recalibrate_batchnorm(self.model, steps.dataset(self.spec, self.work, self.train,
                                                        self.config, shuffle=True))
        self.scores.append(steps.evaluate(self.model, self.spec, self.work, self.evaluation))
        for variable, value in zip(self.model.variables, saved, strict=True):
            variable.assign(value)


def auc_se(auc: float, clicks: int, non_clicks: int) -> float:
    """Hanley-McNeil standard error of an AUC on clicks positives and non_clicks negatives."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (clicks - 1) * (q1 - auc * auc)
           + (non_clicks - 1) * (q2 - auc * auc)) / max(clicks * non_clicks, 1)
    return float(np.sqrt(max(var, 0.0)))


def world_config(world: str, config: str, spec: str, window: int) -> RunConfig:
    """The run config (`config`: configs/demo.yaml by default) on this world."""
    with open(config, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    doc.update(spec=os.path.abspath(spec), logs=os.path.join(world, "logs"),
               work=os.path.join(world, "work"), export=os.path.join(world, "export"))
    doc["windows"] = {**doc.get("windows", {}), "cpm_days": window, "actr_days": window}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(doc, f)
    run = load_config(f.name)
    os.unlink(f.name)
    return run


def recipe_of(run: RunConfig, source: str) -> ModelConfig:
    """The shipped training settings of the source's model."""
    return run.cpm if source == "natural" else run.actr


def trainer(spec: Spec, work: str, run: RunConfig, args: argparse.Namespace
            ) -> tuple[Callable[..., steps.Trained], list[Partition], dict]:
    """(fit(config, kind, callbacks) -> Trained, the training partitions, facts to record):
    train_ctr on the window, or for the A-CTR derive_actr from a CPM trained here once."""
    source = "natural" if args.source == "natural" else "ad"
    train = [(source, args.date - dt.timedelta(days=k)) for k in range(args.window, 0, -1)]
    if args.source != "actr":
        return (lambda config, kind, callbacks=(): steps.train_ctr(
            spec, work, train, config, kind=kind, callbacks=callbacks)), train, {}
    natural = [("natural", args.date - dt.timedelta(days=k)) for k in range(args.cpm_window, 0, -1)]
    cpm = steps.train_ctr(spec, work, natural, run.cpm, kind="cpm", vocab_parts=natural + train,
                          stats_parts=natural)
    facts = {"cpm_rows": traffic(work, natural)[0], "cpm_epoch": cpm.meta["train"]["chosen_epoch"]}
    return (lambda config, kind, callbacks=(): steps.derive_actr(
        cpm, spec, work, [d for _, d in train], config, run.transfer,
        vocab_parts=natural + train, callbacks=callbacks)), train, facts


def run_world(world: str, args: argparse.Namespace) -> dict:
    """Grid and recipe on one world: every evaluation's AUC, GAUC, LogLoss and clicks."""
    spec = load_spec(args.spec)
    work = os.path.join(world, "work")
    run = world_config(world, args.config, args.spec, args.window)
    recipe = recipe_of(run, args.source)
    fit_with, train, facts = trainer(spec, work, run, args)
    source = train[0][0]
    evaluation = [(source, args.date + dt.timedelta(days=k)) for k in range(args.eval_days)]
    rows, ctr = traffic(work, evaluation)
    clicks = round(rows * ctr)
    out = {"world": world, "eval_rows": rows, "eval_clicks": clicks,
           "train_rows": traffic(work, train)[0], "grid": [], "candidates": [], **facts}

    def record(result: dict) -> dict:
        return {"auc": result["auc"], "gauc": result["gauc"], "logloss": result["logloss"],
                "auc_se": auc_se(result["auc"], clicks, rows - clicks)}

    for batch in args.batch_sizes:
        for rate in args.learning_rates:
            config = dataclasses.replace(recipe, batch_size=batch, learning_rate=rate,
                                         max_epochs=args.max_epochs, validation_share=0.0)
            scorer = ScoreEachEpoch(spec, work, train, evaluation, config)
            fit_with(config, "grid", [scorer])
            for epoch, result in enumerate(scorer.scores, 1):
                out["grid"].append({"epochs": epoch, "batch_size": batch, "learning_rate": rate,
                                    **record(result)})
                print(f"{world} grid e{epoch} b{batch} lr{rate}: AUC {result['auc']:.4f}",
                      flush=True)
    for batch, rate in dict.fromkeys([(recipe.batch_size, recipe.learning_rate), *args.recipes]):
        config = dataclasses.replace(recipe, batch_size=batch, learning_rate=rate)
        trained = fit_with(config, "recipe")
        fit = trained.meta["train"]
        result = {"batch_size": batch, "learning_rate": rate,
                  "chosen_epoch": fit["chosen_epoch"], "epochs_run": fit["epochs_run"],
                  "validation_days": len(fit["validation_days"]),
                  "validation_clicks": fit.get("validation_clicks", 0),
                  **record(steps.evaluate(trained.model, spec, work, evaluation))}
        out["candidates"].append(result)
        print(f"{world} recipe: {result}", flush=True)
    return out


def _setting_of(run: dict) -> tuple[int, float]:
    return run["batch_size"], run["learning_rate"]


def summary(worlds: list[dict], recipe: tuple[int, float]) -> dict:
    """Per grid cell the mean AUC over worlds; per recipe setting (`recipe`: the shipped one)
    its gap to the best cell on average (a setting a person would pick once) and to each
    world's best cell, with their spread over the worlds that ran it."""
    cells: dict[tuple, list[float]] = {}
    for world in worlds:
        for g in world["grid"]:
            cells.setdefault((g["epochs"], g["batch_size"], g["learning_rate"]), []).append(g["auc"])
    best_cell = max(cells, key=lambda k: np.mean(cells[k]))
    settings = list(dict.fromkeys([recipe] + [_setting_of(c) for w in worlds
                                              for c in w["candidates"]]))
    candidates = []
    for setting in settings:
        pairs = [(next(c for c in w["candidates"] if _setting_of(c) == setting), i)
                 for i, w in enumerate(worlds) if any(_setting_of(c) == setting
                                                      for c in w["candidates"])]
        aucs = np.array([run["auc"] for run, _ in pairs])
        to_cell = np.array([cells[best_cell][i] for _, i in pairs]) - aucs
        to_each = np.array([max(g["auc"] for g in worlds[i]["grid"]) for _, i in pairs]) - aucs
        noise = 2 * to_cell.std(ddof=1) / np.sqrt(len(pairs)) if len(pairs) > 1 else np.inf
        candidates.append({
            "setting": f"{setting[0]}, {setting[1]}", "shipped": setting == recipe,
            "worlds": len(pairs), "auc": [float(aucs.mean()), float(aucs.std())],
            "epochs": [run["chosen_epoch"] for run, _ in pairs],
            "gap": [float(to_cell.mean()), float(to_cell.std())],
            "gap_each": [float(to_each.mean()), float(to_each.max())],
            "verdict": "tie" if abs(to_cell.mean()) <= noise
                       else ("grid better" if to_cell.mean() > 0 else "recipe better")})
    names = ("epochs", "batch_size", "learning_rate")
    return {"candidates": candidates, "best_cell": dict(zip(names, best_cell, strict=True)),
            "cells": {f"e{k[0]} b{k[1]} lr{k[2]}": [float(np.mean(v)), float(np.std(v))]
                      for k, v in sorted(cells.items())}}


def markdown(report: dict) -> str:
    """The table: per world the shipped recipe and the grid's best; then every recipe setting
    measured against the grid; then the grid's cells."""
    s, recipe = report["summary"], tuple(report["recipe"])
    model = {"natural": "natural traffic, plain model", "ad": "ad traffic, plain model",
             "actr": "the A-CTR derived from a CPM"}[report["source"]]
    lines = [f"# Recipe against a hand grid ({model})", "",
             f"Worlds {', '.join(os.path.basename(w['world']) for w in report['worlds'])}"
             f" ({report.get('note') or 'simulated: `ecdctr simulate --seed`'}). Each trains on "
             f"the {report['window']} days before {report['date']} and is scored on the "
             f"{report['eval_days']} days from it. Grid: epochs 1-{report['max_epochs']} x batch "
             f"{report['batch_sizes']} x learning rate {report['learning_rates']}, no validation, "
             "scored after every epoch on the evaluation days themselves (an oracle's choice, "
             "which favours the grid). Recipe: early stopping (patience 1, best epoch kept) on "
             "10% of the requests of the newest days, grown back to 200 clicks, at the batch and "
             "learning rate shown; the shipped setting is "
             f"batch {recipe[0]}, learning rate {recipe[1]}. ± after one AUC: its Hanley-McNeil "
             "standard error (from the clicks behind it); in the summaries: the standard deviation "
             "over worlds. A gap whose mean is within two standard errors of the paired gaps over "
             "worlds is called a tie.", "",
             "| world | eval rows / clicks | shipped recipe AUC | epoch chosen / run | validation "
             "days / clicks | best grid AUC (epochs, batch, lr) | gap |",
             "|---|---|---|---|---|---|---|"]
    for w in report["worlds"]:
        r = next(c for c in w["candidates"] if _setting_of(c) == recipe)
        best = max(w["grid"], key=lambda g: g["auc"])
        lines.append(
            f"| {os.path.basename(w['world'])} | {w['eval_rows']:,} / {w['eval_clicks']:,} | "
            f"{r['auc']:.4f} ± {r['auc_se']:.4f} | {r['chosen_epoch']} / {r['epochs_run']} | "
            f"{r['validation_days']} / {r['validation_clicks']} | {best['auc']:.4f} "
            f"({best['epochs']}, {best['batch_size']}, {best['learning_rate']}) | "
            f"{best['auc'] - r['auc']:+.4f} |")
    cell = s["best_cell"]
    lines += ["", f"Best grid cell on average over worlds: epochs {cell['epochs']}, batch "
              f"{cell['batch_size']}, learning rate {cell['learning_rate']}.", "",
              "| recipe setting (batch, lr) | worlds | AUC ± sd | epochs chosen | gap to best "
              "cell ± sd | gap to each world's best: mean / max | verdict |",
              "|---|---|---|---|---|---|---|"]
    for row in s["candidates"]:
        lines.append(f"| {row['setting']}{' (shipped)' if row['shipped'] else ''} | "
                     f"{row['worlds']} | {row['auc'][0]:.4f} ± {row['auc'][1]:.4f} | "
                     f"{row['epochs']} | {row['gap'][0]:+.4f} ± {row['gap'][1]:.4f} | "
                     f"{row['gap_each'][0]:+.4f} / {row['gap_each'][1]:+.4f} | {row['verdict']} |")
    lines += ["", "| grid cell | mean AUC ± sd over worlds |", "|---|---|"]
    lines += [f"| {k} | {v[0]:.4f} ± {v[1]:.4f} |" for k, v in s["cells"].items()]
    return "\n".join(lines) + "\n"


def _setting(text: str) -> tuple[int, float]:
    batch, _, rate = text.partition(":")
    return int(batch), float(rate)


def main() -> None:
    """Runs every world and writes <out>.json and <out>.md (--render: only rewrites the .md of
    an <out>.json, the shipped recipe being the current configs/demo.yaml's)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worlds", nargs="+", help="folders with logs/ and work/")
    p.add_argument("--date", type=dt.date.fromisoformat, help="first held-out day")
    p.add_argument("--eval_days", type=int, default=3)
    p.add_argument("--window", type=int, default=14, help="training days before --date")
    p.add_argument("--source", choices=("natural", "ad", "actr"), default="natural")
    p.add_argument("--cpm_window", type=int, default=7,
                   help="--source actr: natural days before --date the CPM trains on")
    p.add_argument("--spec", default=os.path.join(ROOT, "features", "default.yaml"))
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "demo.yaml"),
                   help="run config whose cpm/actr/transfer sections are the shipped recipe")
    p.add_argument("--note", default="", help="what the worlds are, for the table's header")
    p.add_argument("--max_epochs", type=int, default=5)
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--learning_rates", type=float, nargs="+", default=[0.001, 0.003])
    p.add_argument("--recipes", nargs="*", default=[], type=_setting,
                   help="more recipe settings to measure, BATCH:LEARNING_RATE each")
    p.add_argument("--render", action="store_true", help="rewrite <out>.md from <out>.json")
    p.add_argument("--out", required=True, help="output path without extension")
    args = p.parse_args()
    if args.render:
        with open(args.out + ".json", encoding="utf-8") as f:
            write(json.load(f), args)
        return
    if not args.worlds or not args.date:
        p.error("--worlds and --date are required unless --render")
    report = {"date": args.date.isoformat(), "source": args.source, "window": args.window,
              "eval_days": args.eval_days, "max_epochs": args.max_epochs,
              "batch_sizes": args.batch_sizes, "learning_rates": args.learning_rates,
              "spec": os.path.abspath(args.spec), "config": os.path.abspath(args.config),
              "note": args.note, "cpm_window": args.cpm_window, "worlds": []}
    for world in args.worlds:  # written after each world: a partial run keeps what it measured
        report["worlds"].append(run_world(world, args))
        write(report, args)


def write(report: dict, args: argparse.Namespace) -> None:
    """<out>.json and <out>.md of report, the shipped recipe being its run config's."""
    shipped = recipe_of(world_config(report["worlds"][0]["world"],
                                     report.get("config", args.config),
                                     report.get("spec", args.spec), report["window"]),
                        report["source"])
    report["recipe"] = [shipped.batch_size, shipped.learning_rate]
    report["summary"] = summary(report["worlds"], tuple(report["recipe"]))
    with open(args.out + ".json", "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    with open(args.out + ".md", "w", encoding="utf-8") as f:
        f.write(markdown(report))
    print(markdown(report), flush=True)


if __name__ == "__main__":
    main()
