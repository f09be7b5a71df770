"""Benchmark: what one scheduled daily run costs against retraining everything from scratch
for the same day (the efficiency E-CDCTR's asynchronous schedule exists for): wall time and
training rows read, both measured in this run on the same built days.

    python benchmarks/daily_efficiency.py [--days 45] [--rows_per_day 6000]

The daily arm runs day D-1 first (TPM, CPM and A-CTR are then fresh), then times day D: in
the same month and week, only the A-CTR is due and it starts from yesterday's. The scratch
arm times day D in an empty work folder holding the same built examples: TPM, CPM and A-CTR
all train. Beam build time is left out of both (the days are built beforehand).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import time

import ecdctr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)
from ecdctr.config import load_config
from ecdctr.data.simulator import SimConfig, simulate
from ecdctr.spec.feature_spec import load_spec
from pipelines.build import build
from pipelines.daily import run_daily

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, ".data", "daily")
BUILT = ("examples", "stats", "counts", "quarantine")


def config_file(work: str) -> str:
    path = os.path.join(DATA, f"{os.path.basename(work)}.yaml")
    with open(path, "w") as f:
        f.write(f"spec: {os.path.join(HERE, '..', 'features', 'default.yaml')}\nlogs: logs\n"
                f"work: {os.path.basename(work)}\nexport: {os.path.basename(work)}-export\n"
                "windows: {tpm_days: 180, cpm_days: 30, actr_days: 14}\n"
                "model: {hidden: [128, 64], multi_domain: adasparse}\n"
                "gate: {max_auc_drop: 1.0, max_calibration_error: 10.0}\n")
    return path


def rows_read(report: dict) -> int:
    return sum(step.get("train", {}).get("rows_read", 0) for step in report["steps"].values()
               if step.get("status") == "ok")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=int, default=45)
    parser.add_argument("--rows_per_day", type=int, default=6000)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "daily_efficiency.json"))
    args = parser.parse_args()
    start = dt.date(2026, 1, 1)
    day = start + dt.timedelta(days=args.days - 1)
    while day.weekday() in (0,) or day.day == 1:  # D must not start a new week or month
        day -= dt.timedelta(days=1)
    shutil.rmtree(DATA, ignore_errors=True)
    simulate(os.path.join(DATA, "logs"), start, args.days,
             SimConfig(natural_rows_per_day=args.rows_per_day, seed=0))
    build(load_spec(os.path.join(HERE, "..", "features", "default.yaml")), os.path.join(DATA, "logs"),
          os.path.join(DATA, "daily-work"))
    os.makedirs(os.path.join(DATA, "scratch-work"))
    for folder in BUILT:
        shutil.copytree(os.path.join(DATA, "daily-work", folder),
                        os.path.join(DATA, "scratch-work", folder))
    daily = load_config(config_file(os.path.join(DATA, "daily-work")))
    run_daily(daily, day - dt.timedelta(days=1))
    results = {}
    for name, config in (("daily", daily),
                         ("scratch", load_config(config_file(os.path.join(DATA, "scratch-work"))))):
        started = time.perf_counter()
        report = run_daily(config, day)
        results[name] = {"seconds": round(time.perf_counter() - started, 1),
                         "rows_read": rows_read(report),
                         "steps": {k: v["status"] for k, v in report["steps"].items()},
                         "auc": report["metrics"]["auc"]}
    results["ratios"] = {"seconds": results["scratch"]["seconds"] / results["daily"]["seconds"],
                         "rows_read": results["scratch"]["rows_read"] / results["daily"]["rows_read"]}
    results["date"] = day.isoformat()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print("| arm | wall s | training rows read | steps run | A-CTR AUC on D |\n|---|---|---|---|---|")
    for name in ("daily", "scratch"):
        r = results[name]
        ran = ", ".join(k for k, v in r["steps"].items() if v == "ok")
        print(f"| {name} | {r['seconds']} | {r['rows_read']:,} | {ran} | {r['auc']:.4f} |")
    print(f"\nscratch / daily: {results['ratios']['seconds']:.1f}x wall time, "
          f"{results['ratios']['rows_read']:.1f}x rows read")


if __name__ == "__main__":
    main()
