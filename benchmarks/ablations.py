"""E-CDCTR ablations and TPM hypotheses on simulated (or converted real) logs, through `compare`.

Each arm is the base run config (benchmarks/ablations.yaml) with a few keys changed and the
ablation variants it is run with; every arm trains on the same days and is scored on the same
held-out days, with several training seeds. Results: <out>/<arm>.json and .md per arm and
<out>/summary.md (one row per arm and variant).

    .venv/bin/python benchmarks/ablations.py --sim_seed 0 --out benchmarks/results/tpm-s0
    .venv/bin/python benchmarks/ablations.py --arms forgetting --days 112 --date 2026-04-16 \
        --rows_per_day 20000 --away_rate 0.02 --out benchmarks/results/forgetting
    .venv/bin/python benchmarks/ablations.py --logs /tmp/real --date 2017-06-01 --out ...

Arms (the TPM hypotheses of BENCHMARKS.md section 7):
  main         finetune, ecdctr, ecdctr-no_tpm, ecdctr-no_bn_reinit with the defaults
  tpm          ecdctr (TPM) against ecdctr-no_tpm: the two arms of transfer.tpm
  auto         the same two and ecdctr-auto (transfer.tpm: auto), which chooses between them
               on the A-CTR's validation share as the weekly derivation does
  leaky        (a) snapshots trained on the CPM's own window (transfer.tpm_historical: false)
  tpm1         (c) the TPM trained one epoch, no validation (the old recipe)
  standardize  (d) snapshot tables standardised per dimension (transfer.tpm_standardize)
  known        (e) a known-id flag beside the frozen vectors (model.tpm_known_flag)
  k1           (f) one snapshot (K = 1) instead of the last three, a month apart
  cold         (b) every snapshot trained from scratch, not from the previous one
  forgetting   the A-CTR updated day by day over a long ad window, with and without TPM
  recipe, epochs1..3   a plain dnn on natural traffic: the training recipe against fixed
               epoch counts (no validation)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ecdctr  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from ecdctr.cli.logs import LOGGERS  # noqa: E402
from ecdctr.config import load_config  # noqa: E402
from ecdctr.data.simulator import SimConfig, simulate  # noqa: E402
from pipelines.compare import run_compare  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ARMS: dict[str, tuple[dict, list[str]]] = {
    "main": ({}, ["finetune", "ecdctr", "ecdctr-no_tpm", "ecdctr-no_bn_reinit"]),
    "tpm": ({}, ["ecdctr", "ecdctr-no_tpm"]),
    "auto": ({"transfer": {"tpm": "auto"}}, ["ecdctr", "ecdctr-no_tpm", "ecdctr-auto"]),
    "leaky": ({"transfer": {"tpm_historical": False}}, ["ecdctr"]),
    "tpm1": ({"tpm": {"max_epochs": 1, "validation_share": 0}}, ["ecdctr"]),
    "standardize": ({"transfer": {"tpm_standardize": True}}, ["ecdctr"]),
    "known": ({"model": {"tpm_known_flag": True}}, ["ecdctr"]),
    "k1": ({"transfer": {"tpm_snapshots": 1}}, ["ecdctr"]),
    "cold": ({"transfer": {"tpm_warm_start": False}}, ["ecdctr"]),
    "forgetting": ({"windows": {"actr_days": 60}}, ["ecdctr-daily", "ecdctr-no_tpm-daily"]),
    # the recipe against fixed epoch counts: a plain dnn on natural traffic (cpm settings)
    "recipe": ({}, ["dnn"]),
    "epochs1": ({"cpm": {"max_epochs": 1, "validation_share": 0}}, ["dnn"]),
    "epochs2": ({"cpm": {"max_epochs": 2, "validation_share": 0}}, ["dnn"]),
    "epochs3": ({"cpm": {"max_epochs": 3, "validation_share": 0}}, ["dnn"]),
}
NATURAL_ARMS = ("recipe", "epochs1", "epochs2", "epochs3")


def _merge(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the arms' reports")
    p.add_argument("--arms", default="main,leaky,tpm1,standardize,known")
    p.add_argument("--logs", help="logs folder (default: simulate into benchmarks/.data)")
    p.add_argument("--spec", default=os.path.join(HERE, "..", "features", "default.yaml"))
    p.add_argument("--sim_seed", type=int, default=0)
    p.add_argument("--rows_per_day", type=int, default=30000)
    p.add_argument("--days", type=int, default=52, help="simulated days from 2026-01-01")
    p.add_argument("--away_rate", type=float, default=0.0,
                   help="simulator's intermittent users: daily chance to leave (default off)")
    p.add_argument("--return_rate", type=float, default=0.05,
                   help="simulator's daily chance an away user comes back")
    p.add_argument("--date", type=dt.date.fromisoformat, default=dt.date(2026, 2, 15),
                   help="first held-out day D")
    p.add_argument("--eval_days", type=int, default=5)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--base", default=os.path.join(HERE, "ablations.yaml"),
                   help="the base run config (windows, models) the arms change")
    args = p.parse_args()
    logging.basicConfig(format="%(message)s")  # ecdctr's progress as plain lines
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    data = os.path.join(HERE, ".data", f"ablations-s{args.sim_seed}-{args.rows_per_day}"
                        + (f"-away{args.away_rate}-{args.return_rate}" if args.away_rate else ""))
    logs = args.logs or os.path.join(data, "logs")
    if not args.logs and not os.path.isdir(logs):
        simulate(logs, dt.date(2026, 1, 1), args.days,
                 SimConfig(seed=args.sim_seed, natural_rows_per_day=args.rows_per_day,
                           away_rate=args.away_rate, return_rate=args.return_rate))
    work = os.path.join(data, "work") if not args.logs else os.path.join(
        os.path.dirname(os.path.abspath(logs)), "work")
    with open(args.base, encoding="utf-8") as f:
        base = yaml.safe_load(f)
    base.update(spec=os.path.abspath(args.spec), logs=os.path.abspath(logs),
                work=os.path.abspath(work), export=os.path.abspath(os.path.join(work, "..", "export")))
    os.makedirs(args.out, exist_ok=True)
    rows = ["| arm | variant | AUC | GAUC | LogLoss | AUC natural-heavy | AUC returning | GAUC returning |",
            "|---|---|---|---|---|---|---|---|"]
    for arm in args.arms.split(","):
        changes, variants = ARMS[arm]
        path = os.path.join(args.out, f"{arm}.yaml")
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(_merge(base, changes), f)
        report = run_compare(load_config(path), args.date, variants,
                             os.path.join(args.out, f"{arm}.json"), eval_days=args.eval_days,
                             source="natural" if arm in NATURAL_ARMS else "ad",
                             seeds=args.seeds)
        for name, r in report["results"].items():
            cells = [r["auc"], r["gauc"], r["logloss"], r["natural_users_auc"],
                     r["returning_users_auc"], r["returning_users_gauc"]]
            chosen = [run["choice"]["chosen"] for run in report["runs"][name] if "choice" in run]
            rows.append(f"| {arm} | {name}" + (f" (chose {', '.join(chosen)})" if chosen else "")
                        + " | " + " | ".join("n/a" if c["mean"] is None
                                             else f"{c['mean']:.4f} ± {c['std']:.4f}" for c in cells)
                        + " |")
        with open(os.path.join(args.out, "summary.md"), "w", encoding="utf-8") as f:
            f.write("\n".join(rows) + "\n")
    print(json.dumps({"summary": os.path.join(args.out, "summary.md")}))


if __name__ == "__main__":
    main()
