"""AdaSparse's sparsity–quality curve against DNN (BENCHMARKS.md section 4): `compare` on natural
traffic with one AdaSparse variant per sparsity band, on simulator seeds and the real logs.

    .venv/bin/python benchmarks/sparsity_curve.py --data sim:0 --seeds 1 --train_days 7 \
        --out benchmarks/results/sparsity
    .venv/bin/python benchmarks/sparsity_curve.py --data real:benchmarks/.data/real/logs --seeds 1 \
        --out benchmarks/results/sparsity
    .venv/bin/python benchmarks/sparsity_curve.py --summary --out benchmarks/results/sparsity

sim:<seed> simulates 14 + eval_days days from 2026-02-01 (rows_per_day natural rows) into
benchmarks/.data/sparsity-s<seed> once and compares on 2026-02-15; real:<logs> reads the logs
of benchmarks/real_logs.py with benchmarks/real_logs.yaml and compares on 2017-07-01. Both use
benchmarks/compare.yaml's model and recipe. --summary collects every <out>/*.json into
<out>/summary.md: per data set and variant, the achieved sparsity per layer, AUC and GAUC
against dnn (with the evaluation rows' 95% noise) and the AUC per domain-size bin.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import logging
import os

import yaml

from ecdctr.config import load_config
from ecdctr.data.simulator import SimConfig, simulate
from ecdctr.evaluation.uncertainty import Z95
from pipelines.compare import run_compare

HERE = os.path.dirname(os.path.abspath(__file__))
BANDS = "0-0.05,0.15-0.25,0.3-0.5,0.6-0.7"
SIM_DATE, REAL_DATE = dt.date(2026, 2, 15), dt.date(2017, 7, 1)


def _config(data: str, rows_per_day: int, eval_days: int, train_days: int | None, out: str
            ) -> tuple[str, dt.date, str]:
    """(config path, compare date, name) of a --data value; simulates a sim seed's logs once."""
    kind, _, value = data.partition(":")
    with open(os.path.join(HERE, "compare.yaml"), encoding="utf-8") as f:
        body = yaml.safe_load(f)
    if kind == "sim":
        name, date = f"sim-s{value}", SIM_DATE
        root = os.path.join(HERE, ".data", f"sparsity-s{value}")
        logs = os.path.join(root, "logs")
        if not os.path.isdir(logs):
            simulate(logs, date - dt.timedelta(days=14), 14 + eval_days,
                     SimConfig(seed=int(value), natural_rows_per_day=rows_per_day))
    elif kind == "real":
        name, date = "real", REAL_DATE
        logs = os.path.abspath(value)
        root = os.path.dirname(logs)
        body["spec"] = os.path.join(HERE, "real_logs.yaml")
    else:
        raise ValueError(f"--data {data!r}: use sim:<seed> or real:<logs folder>")
    if train_days:
        body["windows"]["cpm_days"] = train_days
    body.update(spec=os.path.abspath(os.path.join(HERE, body["spec"])), logs=logs,
                work=os.path.join(root, "work"), export=os.path.join(root, "export"))
    path = os.path.join(out, f"{name}.yaml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(body, f)
    return path, date, name


def _cell(result: dict, base: dict, key: str) -> str:
    """mean (difference to dnn, ± the 95% noise of the difference)."""
    mean, se = result[key]["mean"], result["noise"].get(f"{key}_se", float("nan"))
    base_mean, base_se = base[key]["mean"], base["noise"].get(f"{key}_se", float("nan"))
    if result is base:
        return f"{mean:.4f} ± {result[key]['std']:.4f}"
    noise = Z95 * (se ** 2 + base_se ** 2) ** 0.5
    return f"{mean:.4f} ± {result[key]['std']:.4f} ({mean - base_mean:+.4f} ±{noise:.4f})"


def summary(out: str) -> str:
    """The Markdown summary of every report in out."""
    lines = ["AUC, GAUC: mean ± std over training seeds (difference to dnn ± the 95% noise of "
             "the difference: evaluation rows, unpaired). Sparsity: share of pruned factors "
             "per layer on the evaluation rows.", ""]
    for path in sorted(glob.glob(os.path.join(out, "*.json"))):
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
        results = report["results"]
        base = results["dnn"]
        clicks = base["noise"].get("clicks", float("nan"))
        lines += [f"**{os.path.basename(path)[:-5]}**: {report['train_rows']:,} training rows, "
                  f"{report['eval_rows']:,} evaluation rows ({clicks:,.0f} clicks), "
                  f"{report['domains']} domains, {report['seeds']} training seeds.", "",
                  "| variant | sparsity per layer | AUC | GAUC | AUC by domain-size bin (1 … 5) |",
                  "|---|---|---|---|---|"]
        for name, r in results.items():
            sparsity = "/".join(f"{s:.2f}" for s in r.get("sparsity", [])) or "–"
            lines.append(f"| {name} | {sparsity} | {_cell(r, base, 'auc')} | "
                         f"{_cell(r, base, 'gauc')} | "
                         + " / ".join(f"{a:.4f}" for a in r["bins_auc"]) + " |")
        lines.append("")
    text = "\n".join(lines)
    with open(os.path.join(out, "summary.md"), "w", encoding="utf-8") as f:
        f.write(text)
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the reports")
    p.add_argument("--data", help="sim:<seed> or real:<logs folder>")
    p.add_argument("--bands", default=BANDS, help="comma-separated r_min-r_max bands")
    p.add_argument("--seeds", type=int, default=2, help="training seeds")
    p.add_argument("--rows_per_day", type=int, default=20000, help="simulated natural rows a day")
    p.add_argument("--eval_days", type=int, default=2)
    p.add_argument("--train_days", type=int, help="training days (default: compare.yaml's 14)")
    p.add_argument("--summary", action="store_true", help="only collect <out>/*.json")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if not args.summary:
        if not args.data:
            p.error("--data is required unless --summary")
        logging.basicConfig(format="%(message)s")
        for logger in ("pipelines", "ecdctr"):
            logging.getLogger(logger).setLevel(logging.INFO)
        path, date, name = _config(args.data, args.rows_per_day, args.eval_days, args.train_days,
                                     args.out)
        variants = ["dnn", *(f"dnn+adasparse:{b}" for b in args.bands.split(","))]
        run_compare(load_config(path), date, variants, os.path.join(args.out, f"{name}.json"),
                    eval_days=args.eval_days, seeds=args.seeds)
    print(summary(args.out))


if __name__ == "__main__":
    main()
