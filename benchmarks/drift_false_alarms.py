"""False alarms and detections of the drift check (ecdctr.data.drift.compare) on simulated ad
traffic of several sizes: each world's days are profiled straight from the simulator (rows,
clicks, the mean price), every day is compared with the trailing days as the build does, and
the warnings are counted by kind. Real ad volume is not constant: a day's rows are
Poisson(mean x weekday factor x lognormal day noise), with the day noise's sigma a column of
the table. Injected shifts (a lost shard: rows x 0.4; a label bug: CTR x 2; a unit change:
price x 3) on separate days measure what is still caught.

    PYTHONPATH=. python benchmarks/drift_false_alarms.py --section after

writes (or replaces) its section of benchmarks/results/drift_false_alarms.md. A few minutes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import re
import subprocess

import numpy as np

from ecdctr.data import drift
from ecdctr.data.simulator import SimConfig, World

OUT = os.path.join(os.path.dirname(__file__), "results", "drift_false_alarms.md")
SIZES = (20, 60, 200, 2000, 20000)  # mean ad rows a day
DAY_SIGMAS = (0.1, 0.4)  # lognormal day-to-day volume noise beyond Poisson
WEEKDAY_FACTORS = (1.0, 1.0, 1.0, 1.0, 1.05, 0.75, 0.7)  # Monday .. Sunday
WARMUP_DAYS = 28
DAYS = 140  # days compared per world (20 of them carry an injected shift, one kind each)
SHIFTS = ("rows", "CTR", "price")
START = dt.date(2025, 1, 6)  # a Monday


def day_profile(world: World, rows: int, date: dt.date, shift: str | None,
                rng: np.random.Generator) -> dict:
    """What drift.profile reads from a built day, taken from the simulator's arrays."""
    if shift == "rows":
        rows = max(int(rows * 0.4), 1)
    batch = world.sample("ad", max(rows, 1))
    clicks = batch["click"].astype(float)
    if shift == "CTR":  # every row clicked twice as often as the world says
        p = np.minimum(2.0 / (1.0 + np.exp(-batch["logit"])), 1.0)
        clicks = (rng.random(len(p)) < p).astype(float)
    price = world.price[batch["item"]] * (3.0 if shift == "price" else 1.0)
    n = len(clicks)
    variance = float(np.var(price)) if n else 0.0
    return {"rows": n, "clicks": int(clicks.sum()), "ctr": float(clicks.mean()) if n else 0.0,
            "date": date.isoformat(),
            "means": {"price": {"mean": float(price.mean()), "stderr": math.sqrt(variance / n)}},
            "tokens": {}}


def run_world(size: int, sigma: float, seed: int) -> dict:
    """Alarm counts of one world: per kind, on clean days and on the days shifted that way."""
    config = SimConfig(seed=seed, users=max(3000, size), items=1000,
                       natural_rows_per_day=max(10 * size, 10), new_users_per_day=20,
                       new_items_per_day=5)
    world = World(config)
    rng = np.random.default_rng(seed)
    shifted = {WARMUP_DAYS + 7 * k + 3: SHIFTS[k % len(SHIFTS)] for k in range(DAYS // 7)}
    profiles: list[dict] = []
    clean = {kind: 0 for kind in SHIFTS}
    caught = {kind: 0 for kind in SHIFTS}
    counted = 0
    for day in range(WARMUP_DAYS + DAYS):
        if day:
            world.advance()
        date = START + dt.timedelta(days=day)
        mean = size * WEEKDAY_FACTORS[date.weekday()] * math.exp(sigma * rng.normal())
        shift = shifted.get(day)
        profile = day_profile(world, int(rng.poisson(mean)), date, shift, rng)
        if day >= WARMUP_DAYS:
            warnings = drift.compare(profile, profiles[-drift.TRAILING_DAYS:])
            kinds = {_kind(w) for w in warnings}
            if shift:
                caught[shift] += shift in kinds
            else:
                counted += 1
                for kind in kinds:
                    clean[kind] += 1
        if not shift:  # a shifted day is fixed and rebuilt before it becomes a trailing day
            profiles.append(profile)
    shifts = {kind: sum(1 for s in shifted.values() if s == kind) for kind in SHIFTS}
    return {"clean": clean, "days": counted, "caught": caught, "shifts": shifts}


def _kind(warning: str) -> str:
    """rows, CTR or a column name: the first word of a drift warning."""
    return warning.split()[0].rstrip(":")


def table(seeds: int) -> list[str]:
    lines = [f"Per world: {WARMUP_DAYS} warm-up days, then {DAYS} days compared, {seeds} seed(s); "
             "false alarms: share of clean days with a warning of that kind; caught: share of "
             "the days shifted that way that are flagged for it.", "",
             "| ad rows/day | day sigma | rows false | CTR false | price false "
             "| rows x0.4 caught | CTR x2 caught | price x3 caught |",
             "|---|---|---|---|---|---|---|---|"]
    for size in SIZES:
        for sigma in DAY_SIGMAS:
            runs = [run_world(size, sigma, seed) for seed in range(seeds)]
            days = sum(r["days"] for r in runs)
            false = [sum(r["clean"][k] for r in runs) / days for k in SHIFTS]
            caught = [sum(r["caught"][k] for r in runs) / sum(r["shifts"][k] for r in runs)
                      for k in SHIFTS]
            lines.append(f"| {size:,} | {sigma} | " + " | ".join(f"{x:.1%}" for x in false)
                         + " | " + " | ".join(f"{x:.0%}" for x in caught) + " |")
            print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--section", default="after", help="before | after (the section replaced)")
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=os.path.dirname(__file__) or ".").stdout.strip()
    body = "\n".join([f"## {args.section} (drift.py at commit {commit}, trailing "
                      f"{drift.TRAILING_DAYS} days)", "", *table(args.seeds)]) + "\n"
    old = open(OUT, encoding="utf-8").read() if os.path.exists(OUT) else (
        "# Drift check: false alarms and detections by day size\n\n"
        "Written by benchmarks/drift_false_alarms.py.\n")
    pattern = re.compile(rf"## {args.section} .*?(?=\n## |\Z)", re.S)
    text = pattern.sub(lambda _: body.rstrip("\n"), old) if pattern.search(old) else (
        old.rstrip("\n") + "\n\n" + body)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(text.rstrip("\n") + "\n")


if __name__ == "__main__":
    main()
