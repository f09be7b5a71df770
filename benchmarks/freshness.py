"""What freshness buys: the next day's AUC of the A-CTR the daily run for D publishes, when it
learns through D (windows.actr_through_date: true, the default: judged on a held-out share of
D) against the old scheme (false: it learns from the days before D and is judged on all of D).

For each simulator seed a small world is simulated, `daily` runs over --days consecutive days
in the new scheme, then in the old one on a copy of the same work folder (the same built days,
TPM snapshots and CPMs: only the A-CTRs differ). The A-CTR of the run for D (the candidate it
publishes) is then scored on all of D+1, which neither scheme's model of D has seen: AUC with
its 95% interval and clicks (ecdctr.evaluation.evaluator), and the two schemes' difference on
the same rows (paired DeLong, ecdctr.evaluation.uncertainty.PairedAuc). Per seed, the daily
differences are pooled (their mean, with the 95% interval of the mean of independent days); a
difference whose interval holds 0 is a tie. Writes <out>.json and <out>.md.

Every day is built once per seed before the runs. Without --export the daily runs skip their
export step (staging, gate, publish: it does not change the model of D and costs about a third
of a run on a small world), so what is scored is the candidate the run for D would publish;
with --export the table also says how many were published.

    nice -n 10 .venv/bin/python benchmarks/freshness.py --seeds 101 102 103 --days 9 \
        --root /tmp/freshness --out benchmarks/results/freshness
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import sys
from collections.abc import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# ruff: noqa: I001  (keep `import ecdctr` ahead of TensorFlow, whatever the import sorter wants)
import ecdctr  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

from ecdctr.config import load_config  # noqa: E402
from ecdctr.data.datasets import make_dataset, partition_files  # noqa: E402
from ecdctr.data.simulator import SimConfig, simulate  # noqa: E402
from ecdctr.evaluation.uncertainty import Z95, PairedAuc  # noqa: E402
from ecdctr.training.checkpoint import load_checkpoint  # noqa: E402
from ecdctr.training.loop import scored_batches  # noqa: E402
from ecdctr.spec.feature_spec import load_spec  # noqa: E402
from pipelines import daily, steps  # noqa: E402
from pipelines.build import build  # noqa: E402
from pipelines.daily import run_daily  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START = dt.date(2026, 3, 2)  # a Monday
WARMUP = 14  # days before the first run: the TPM's and the CPM's windows
SCHEMES = {"fresh": True, "old": False}  # windows.actr_through_date
CONFIG = """spec: {spec}
logs: ../logs
work: work
export: export
windows: {{tpm_days: 7, cpm_days: 7, actr_days: 7, actr_through_date: {through}}}
transfer: {{tpm_snapshots: 1}}
model: {{hidden: [32, 16]}}
tpm: {{hidden: [8], batch_size: 512, max_epochs: 2}}
cpm: {{batch_size: 256, max_epochs: 3}}
actr: {{batch_size: 128, max_epochs: 3}}
"""


def world(root: str, seed: int, days: int) -> str:
    """Simulates the world of seed (once): WARMUP days, the --days run days and the day after."""
    logs = os.path.join(root, "logs")
    if not os.path.isdir(logs):
        simulate(logs, START, WARMUP + days + 1,
                 SimConfig(users=3000, items=800, new_users_per_day=60, new_items_per_day=15,
                           natural_rows_per_day=8000, ctr_offset=-3.5, seed=seed))
    return logs


def prebuild(root: str, logs: str, last: dt.date) -> None:
    """Builds every day through last into the fresh scheme's work folder (the old one copies
    it), so each daily run finds its days built."""
    work = os.path.join(root, "fresh", "work")
    build(load_spec(os.path.join(ROOT, "features", "default.yaml")), logs, work, start=START,
          end=last, skip_built=True)


def run_scheme(root: str, scheme: str, dates: list[dt.date], export: bool) -> dict[str, bool | None]:
    """`daily` over dates in one scheme; {date: published (None: export skipped)}."""
    folder = os.path.join(root, scheme)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "config.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(CONFIG.format(spec=os.path.join(ROOT, "features", "default.yaml"),
                              through=str(SCHEMES[scheme]).lower()))
    config = load_config(path)
    published: dict[str, bool | None] = {}
    patch = skip_export(export)
    try:
        for date in dates:
            report = run_daily(config, date)
            kept = os.path.join(folder, "kept", date.isoformat())  # the run prunes old A-CTRs
            if not os.path.isdir(kept):
                shutil.copytree(os.path.join(folder, "work", "models", "actr", date.isoformat()),
                                kept)
            published[date.isoformat()] = report.get("published") if export else None
            print(f"  {scheme} {date}: {report['outcome'] if export else report['status']}",
                  flush=True)
    finally:
        patch()
    return published


def skip_export(export: bool) -> Callable[[], None]:
    """Without export, DailyJob.export only marks the step skipped; returns the undo."""
    if export:
        return lambda: None
    original = daily.DailyJob.export
    daily.DailyJob.export = lambda self, entry, _: entry.update(status="skipped")

    def undo() -> None:
        daily.DailyJob.export = original
    return undo


def copy_shared(root: str) -> None:
    """The old scheme's work folder: the fresh one's built days, TPM snapshots and CPMs."""
    source, target = os.path.join(root, "fresh", "work"), os.path.join(root, "old", "work")
    if os.path.isdir(target):
        return
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".daily.lock*", ".build.lock*"))
    for name in ("reports", "tensorboard", os.path.join("models", "actr")):
        shutil.rmtree(os.path.join(target, name), ignore_errors=True)


def next_day(root: str, date: dt.date) -> dict:
    """Both schemes' A-CTR of date scored on all of date + 1, alone and paired."""
    work = os.path.join(root, "fresh", "work")
    after = [("ad", date + dt.timedelta(days=1))]
    out, scored = {}, {}
    for scheme in SCHEMES:
        actr = load_checkpoint(os.path.join(root, scheme, "kept", date.isoformat()))
        r = steps.evaluate(actr.model, actr.spec, work, after)
        out[scheme] = {k: r[k] for k in ("rows", "clicks", "auc", "auc_ci", "logloss",
                                          "calibration_ratio")}
        out[scheme]["learned_through"] = actr.meta["learned_through"]
        dataset = make_dataset(actr.spec, partition_files(work, "ad", [after[0][1]]), 4096)
        batches = list(scored_batches(actr.model, actr.spec, dataset))
        scored[scheme] = (np.concatenate([b["labels"] for b in batches]),
                          np.concatenate([b["probs"] for b in batches]))
    paired = PairedAuc()
    labels = scored["fresh"][0]
    assert np.array_equal(labels, scored["old"][0])  # the same rows in the same order
    paired.add(labels, scored["fresh"][1], scored["old"][1])
    out["paired"] = paired.result()
    return out


def pooled(days: list[dict]) -> dict:
    """Mean of the daily AUC differences (fresh - old) and the 95% interval of that mean."""
    diffs = [d["fresh"]["auc"] - d["old"]["auc"] for d in days]
    variances = [d["paired"]["difference_variance"] for d in days]
    ok = [(x, v) for x, v in zip(diffs, variances, strict=True)
          if math.isfinite(x) and math.isfinite(v)]
    if not ok:
        return {"days": 0}
    mean = float(np.mean([x for x, _ in ok]))
    half = Z95 * math.sqrt(sum(v for _, v in ok)) / len(ok)
    return {"days": len(ok), "difference": mean, "ci": [mean - half, mean + half],
            "fresh_auc": float(np.mean([d["fresh"]["auc"] for d in days])),
            "old_auc": float(np.mean([d["old"]["auc"] for d in days])),
            "clicks": int(sum(d["fresh"]["clicks"] for d in days)),
            "verdict": "tie" if mean - half <= 0 <= mean + half
            else ("fresh better" if mean > 0 else "old better")}


def run_seed(base: str, seed: int, days: int, export: bool) -> dict:
    root = os.path.join(base, f"seed{seed}")
    os.makedirs(root, exist_ok=True)
    logs = world(root, seed, days)
    dates = [START + dt.timedelta(days=WARMUP + i) for i in range(days)]
    prebuild(root, logs, dates[-1] + dt.timedelta(days=1))
    print(f"seed {seed}: fresh", flush=True)
    published = {"fresh": run_scheme(root, "fresh", dates, export)}
    copy_shared(root)
    print(f"seed {seed}: old", flush=True)
    published["old"] = run_scheme(root, "old", dates, export)
    per_day = []
    for date in dates:
        scores = next_day(root, date)
        scores.update(date=date.isoformat(),
                      published={s: published[s][date.isoformat()] for s in SCHEMES})
        per_day.append(scores)
        print(f"  {date}+1: fresh {scores['fresh']['auc']:.4f} old {scores['old']['auc']:.4f} "
              f"({scores['fresh']['clicks']} clicks)", flush=True)
    return {"seed": seed, "days": per_day, "pooled": pooled(per_day)}


HEADER = """# Freshness: the next day's AUC of the A-CTR of D, learning through D or not

benchmarks/freshness.py: per simulator seed (users 3,000, 8,000 natural and 800 ad rows a day,
ctr_offset -3.5; windows 7/7/7 days, weekly CPM, one TPM snapshot), `daily` over {days}
consecutive days in each scheme on the same built days, TPM and CPMs. `fresh`: the default
(windows.actr_through_date true: the A-CTR of D learns through D less its 20% evaluation
share); `old`: actr_through_date false (it learns through D-1). Each A-CTR of D is scored on
all of D+1's ad rows (800 a day), which neither has seen. The difference is the mean of the
daily AUC differences on the same rows, its 95% interval from the paired DeLong variances of
the days (independent days); an interval holding 0 is a tie. Export skipped unless --export:
the scored model is the candidate the run for D publishes.

"""


def table(results: list[dict]) -> str:
    lines = ["| seed | days | clicks on D+1 (sum) | next-day AUC fresh | next-day AUC old | "
             "fresh - old (95%) | published fresh / old | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        p = r["pooled"]
        if not p.get("days"):
            lines.append(f"| {r['seed']} | 0 | | | | | | no defined difference |")
            continue
        pub = [sum(bool(d["published"][s]) for d in r["days"]) if r["days"][0]["published"][s]
               is not None else "-" for s in SCHEMES]
        lines.append(f"| {r['seed']} | {p['days']} | {p['clicks']} | {p['fresh_auc']:.4f} | "
                     f"{p['old_auc']:.4f} | {p['difference']:+.4f} [{p['ci'][0]:+.4f}, "
                     f"{p['ci'][1]:+.4f}] | {pub[0]} / {pub[1]} of {len(r['days'])} | "
                     f"{p['verdict']} |")
    days = [d for r in results for d in r["days"]]
    p = pooled(days)
    if len(results) > 1 and p.get("days"):
        lines.append(f"| all | {p['days']} | {p['clicks']} | {p['fresh_auc']:.4f} | "
                     f"{p['old_auc']:.4f} | {p['difference']:+.4f} [{p['ci'][0]:+.4f}, "
                     f"{p['ci'][1]:+.4f}] | | {p['verdict']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[101, 102, 103])
    parser.add_argument("--days", type=int, default=9)
    parser.add_argument("--root", default="/tmp/freshness")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "freshness"))
    parser.add_argument("--export", action="store_true",
                        help="run the export step too (gate and publish)")
    args = parser.parse_args()
    results = []
    for seed in args.seeds:
        results.append(run_seed(args.root, seed, args.days, args.export))
        with open(args.out + ".json", "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
        with open(args.out + ".md", "w", encoding="utf-8") as f:
            f.write(HEADER.format(days=args.days) + table(results))
        print(table(results), flush=True)


if __name__ == "__main__":
    main()
