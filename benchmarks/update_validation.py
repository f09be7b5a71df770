"""The A-CTR's daily update validated by evidence (transfer.validate_update) against the fixed
epoch count its lineage chose: the next day's AUC of each update chain.

Reads the worlds benchmarks/freshness.py leaves (--root R: R/seed<S>/fresh/{config.yaml,work,
kept/<D>}: built days, TPM snapshots, CPMs and each day's A-CTR of the default scheme). From the
A-CTR the first run day derived from its CPM, two chains of daily updates run over the days
up to the next CPM (the days `daily` updates rather than re-derives), exactly as `daily` calls
pipelines.steps.update_actr (the A-CTR vocabulary, the 20% evaluation share of D left out, the
ad days the previous model has not learned from): `fixed` (the default) and `validated`. The
A-CTR of each D is scored on all of D+1's ad rows, which neither chain has seen: AUC with its
95% interval and clicks, and the chains' difference on the same rows (paired DeLong), pooled
over days and seeds as benchmarks/freshness.py pools. Writes <out>.json and <out>.md.

    nice -n 10 .venv/bin/python benchmarks/update_validation.py --root /tmp/freshness \
        --seeds 101 102 103 --out benchmarks/results/update_validation
Each chain saves its scores under <root>/seed<S>/scores/<chain>/, so one process per seed and
chain can run in parallel (--seeds S --chains fixed); a run pairs every seed whose two chains
are saved (`--chains` with no name: pair only).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# ruff: noqa: I001  (keep `import ecdctr` ahead of TensorFlow, whatever the import sorter wants)
import ecdctr  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

from benchmarks.freshness import pooled  # noqa: E402
from ecdctr.config import load_config  # noqa: E402
from ecdctr.data.datasets import make_dataset, partition_files  # noqa: E402
from ecdctr.evaluation.uncertainty import PairedAuc  # noqa: E402
from ecdctr.io.jsonio import json_safe  # noqa: E402
from ecdctr.training.checkpoint import load_checkpoint  # noqa: E402
from pipelines import steps  # noqa: E402
from pipelines.held_out import evaluation_share  # noqa: E402
from pipelines.update_check import scores_on  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHAINS = ("validated", "fixed")


def chain(folder: str, validate: bool, scores: str, most: int) -> None:
    """The chain's A-CTR of each updated day after the first derived one (as daily runs it),
    each scored on all of the next day's ad rows as it comes: <scores>/<D>.json (AUC with its
    interval, clicks, LogLoss, calibration, what the update check kept) and <D>.npz (labels and
    probabilities, for the pairing); at most `most` days."""
    config = load_config(os.path.join(folder, "config.yaml"))
    work, windows = config.work, config.windows
    kept = sorted(os.listdir(os.path.join(folder, "kept")))
    model = load_checkpoint(os.path.join(folder, "kept", kept[0]), config.actr)
    spec = model.spec
    os.makedirs(scores, exist_ok=True)
    for name in kept[1:most + 1]:
        date = dt.date.fromisoformat(name)
        saved = load_checkpoint(os.path.join(folder, "kept", name)).meta
        if saved.get("cpm_id") != model.meta.get("cpm_id"):
            break  # daily re-derived from a new CPM here: the chains end
        days = steps.window_days(work, "ad", date + dt.timedelta(days=1), windows.actr_days)
        shared = steps.shared_parts(work, date, windows)
        shared += [("ad", d) for d in days if ("ad", d) not in shared]
        evaluation = evaluation_share(spec, work, ("ad", date), windows.evaluation_share)
        seen = dt.date.fromisoformat(model.meta["learned_through"])
        model = steps.update_actr(model, spec, work, [d for d in days if d > seen], config.actr,
                                  vocab_parts=shared, evaluation=evaluation, validate=validate,
                                  earlier=[d for d in days if d <= seen])
        after = [("ad", date + dt.timedelta(days=1))]
        r = steps.evaluate(model.model, spec, work, after)
        check = model.meta["train"].get("update_check")
        result = {**{k: r[k] for k in ("rows", "clicks", "auc", "auc_ci", "logloss",
                                        "calibration_ratio")},
                  "kept": check["kept"] if check else None, "check": check,
                  "epochs_run": model.meta["train"].get("epochs_run")}
        labels, probs = scores_on(model.model, spec, make_dataset(
            spec, partition_files(work, "ad", [after[0][1]]), 4096))
        np.savez(os.path.join(scores, f"{name}.npz"), labels=labels, probs=probs)
        with open(os.path.join(scores, f"{name}.json"), "w", encoding="utf-8") as f:
            json.dump(json_safe(result), f)
        print(f"  {'validated' if validate else 'fixed'} {name}: AUC on D+1 {r['auc']:.4f}, "
              + (f"kept {check['kept']}" if check else f"{result['epochs_run']} epoch(s)"),
              flush=True)


def paired_days(scores: str) -> list[dict]:
    """The days both chains of a seed scored (<scores>/<chain>/<D>.*), alone and paired."""
    days = sorted(set.intersection(*[{f[:-5] for f in os.listdir(os.path.join(scores, c))
                                      if f.endswith(".json")} for c in CHAINS]))
    out = []
    for date in days:
        day, probs = {"date": date}, {}
        for c in CHAINS:
            with open(os.path.join(scores, c, f"{date}.json"), encoding="utf-8") as f:
                day[c] = json.load(f)
            saved = np.load(os.path.join(scores, c, f"{date}.npz"))
            probs[c], labels = saved["probs"], saved["labels"]
        paired = PairedAuc()
        paired.add(labels, probs["validated"], probs["fixed"])
        day["paired"] = paired.result()
        out.append(day)
    return out


def as_freshness(day: dict) -> dict:
    """A day in benchmarks.freshness.pooled's terms (its "fresh" = validated, "old" = fixed)."""
    return {"fresh": day["validated"], "old": day["fixed"], "paired": day["paired"]}


def table(results: list[dict]) -> str:
    lines = ["| seed | days | clicks on D+1 (sum) | next-day AUC validated | fixed | validated - "
             "fixed (95%) | updates kept out | verdict |", "|---|---|---|---|---|---|---|---|"]

    def row(name: str, days: list[dict]) -> str:
        p = pooled([as_freshness(d) for d in days])
        out = sum(d["validated"]["kept"] == "previous" for d in days)
        return (f"| {name} | {p['days']} | {p['clicks']:,} | {p['fresh_auc']:.4f} | "
                f"{p['old_auc']:.4f} | {p['difference']:+.4f} [{p['ci'][0]:+.4f}, "
                f"{p['ci'][1]:+.4f}] | {out} of {len(days)} | "
                + p["verdict"].replace("fresh", "validated").replace("old", "fixed") + " |")
    lines += [row(str(r["seed"]), r["days"]) for r in results]
    if len(results) > 1:
        lines.append(row("all", [d for r in results for d in r["days"]]))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/freshness", help="benchmarks/freshness.py's --root")
    parser.add_argument("--seeds", type=int, nargs="+", default=[101, 102, 103])
    parser.add_argument("--chains", nargs="*", choices=CHAINS, default=list(CHAINS),
                        help="run only these chains (one process per chain and seed runs in "
                             "parallel; a run without chains to run pairs what is saved)")
    parser.add_argument("--days", type=int, default=6, help="updated days per chain, at most")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                      "update_validation"))
    args = parser.parse_args()
    for seed in args.seeds:
        folder = os.path.join(args.root, f"seed{seed}", "fresh")
        for name in args.chains:
            print(f"seed {seed}: {name}", flush=True)
            chain(folder, name == "validated", os.path.join(args.root, f"seed{seed}", "scores",
                                                            name), args.days)
    results = [{"seed": seed, "days": paired_days(os.path.join(args.root, f"seed{seed}", "scores"))}
               for seed in args.seeds
               if all(os.path.isdir(os.path.join(args.root, f"seed{seed}", "scores", c))
                      for c in CHAINS)]
    if results:
        write([r for r in results if r["days"]], args.out)


def write(results: list[dict], out: str) -> None:
    """<out>.json (every figure) and <out>.md (the table)."""
    with open(out + ".json", "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    with open(out + ".md", "w", encoding="utf-8") as f:
        f.write(table(results))
    print(table(results), flush=True)


if __name__ == "__main__":
    main()
