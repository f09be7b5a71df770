"""The training recipe against a grid tuned by hand: epochs x batch size x learning rate.

On each simulated world (one folder per simulator seed, holding logs/ and work/ as
`ecdctr simulate` and `ecdctr build` write them) a plain model of the `--source` traffic is
trained on the `--window` days before `--date` and scored on the `--eval_days` days from it,
with the same code `compare` and `daily` run (pipelines.steps.train_ctr):
  grid    every batch size x learning rate for a fixed number of epochs, no validation; the
          model after each epoch is scored too (BatchNorm re-estimated as train_ctr does after
          a fit), so one fit of --max_epochs gives every epoch count of the grid;
  recipe  the run config's own settings (configs/demo.yaml: its `cpm` section for natural
          traffic, `actr` for ad traffic): validation share by request-id hash sized by its
          clicks, early stopping, the best epoch kept.
Writes <out>.json (every figure) and <out>.md (the table).

    nice -n 10 .venv/bin/python benchmarks/recipe_grid.py --worlds /tmp/w101 /tmp/w102 \
        /tmp/w103 --date 2026-03-15 --out benchmarks/results/recipe_grid
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import sys
import tempfile

import numpy as np
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# ruff: noqa: I001  (keep `import ecdctr` ahead of TensorFlow, whatever the import sorter wants)
import ecdctr  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tf_keras as keras  # noqa: E402

from ecdctr.config import load_config  # noqa: E402
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


def world_config(world: str, source: str, window: int) -> ModelConfig:
    """The training settings configs/demo.yaml ships for the source's model, on this world."""
    with open(os.path.join(ROOT, "configs", "demo.yaml"), encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    doc.update(spec=os.path.join(ROOT, "features", "default.yaml"),
               logs=os.path.join(world, "logs"), work=os.path.join(world, "work"),
               export=os.path.join(world, "export"))
    doc["windows"] = {**doc.get("windows", {}), "cpm_days": window, "actr_days": window}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(doc, f)
    config = load_config(f.name)
    os.unlink(f.name)
    return config.cpm if source == "natural" else config.actr


def run_world(world: str, args: argparse.Namespace) -> dict:
    """Grid and recipe on one world: every evaluation's AUC, GAUC, LogLoss and clicks."""
    spec = load_spec(os.path.join(ROOT, "features", "default.yaml"))
    work = os.path.join(world, "work")
    recipe = world_config(world, args.source, args.window)
    train = [(args.source, args.date - dt.timedelta(days=k)) for k in range(args.window, 0, -1)]
    evaluation = [(args.source, args.date + dt.timedelta(days=k)) for k in range(args.eval_days)]
    rows, ctr = traffic(work, evaluation)
    clicks = round(rows * ctr)
    out = {"world": world, "eval_rows": rows, "eval_clicks": clicks,
           "train_rows": traffic(work, train)[0], "grid": [], "candidates": []}

    def record(result: dict) -> dict:
        return {"auc": result["auc"], "gauc": result["gauc"], "logloss": result["logloss"],
                "auc_se": auc_se(result["auc"], clicks, rows - clicks)}

    for batch in args.batch_sizes:
        for rate in args.learning_rates:
            config = dataclasses.replace(recipe, batch_size=batch, learning_rate=rate,
                                         max_epochs=args.max_epochs, validation_share=0.0)
            scorer = ScoreEachEpoch(spec, work, train, evaluation, config)
            steps.train_ctr(spec, work, train, config, kind="grid",
                            callbacks=[scorer])
            for epoch, result in enumerate(scorer.scores, 1):
                out["grid"].append({"epochs": epoch, "batch_size": batch, "learning_rate": rate,
                                    **record(result)})
                print(f"{world} grid e{epoch} b{batch} lr{rate}: AUC {result['auc']:.4f}",
                      flush=True)
    for batch, rate in dict.fromkeys([(recipe.batch_size, recipe.learning_rate), *args.recipes]):
        config = dataclasses.replace(recipe, batch_size=batch, learning_rate=rate)
        trained = steps.train_ctr(spec, work, train, config, kind="recipe")
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
    lines = [f"# Recipe against a hand grid ({report['source']} traffic, plain `dnn`)", "",
             f"Simulated worlds {', '.join(os.path.basename(w['world']) for w in report['worlds'])}"
             f" (`ecdctr simulate --seed`, 5,000 users, 6,000 natural rows a day). Each trains on "
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
    p.add_argument("--source", choices=("natural", "ad"), default="natural")
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
            report = json.load(f)
    else:
        if not args.worlds or not args.date:
            p.error("--worlds and --date are required unless --render")
        worlds = [run_world(w, args) for w in args.worlds]
        report = {"date": args.date.isoformat(), "source": args.source, "window": args.window,
                  "eval_days": args.eval_days, "max_epochs": args.max_epochs,
                  "batch_sizes": args.batch_sizes, "learning_rates": args.learning_rates,
                  "worlds": worlds}
    shipped = world_config(report["worlds"][0]["world"], report["source"], report["window"])
    report["recipe"] = [shipped.batch_size, shipped.learning_rate]
    report["summary"] = summary(report["worlds"], tuple(report["recipe"]))
    with open(args.out + ".json", "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    with open(args.out + ".md", "w", encoding="utf-8") as f:
        f.write(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
