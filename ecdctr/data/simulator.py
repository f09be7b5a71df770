"""Deterministic simulator of natural and ad impression logs, the embedded default data: the
days of a simulated world (data.simulated_world, which describes it and SimConfig's knobs)
written as JSON lines, one gzip file per source and day.

The same seed, config, start date and number of days give byte-identical files.
"""

from __future__ import annotations

import calendar
import datetime
import gzip
import json
import logging
import os
import time

import numpy as np

from ecdctr.data.simulated_world import SOURCES, SimConfig, World

logger = logging.getLogger(__name__)


def _rows(world: World, batch: dict[str, np.ndarray], date: datetime.date, source: str):
    """JSON-ready rows of a sampled batch."""
    c = world.config
    day_start = calendar.timegm(date.timetuple())
    prefix = f"{source[0]}{date:%Y%m%d}-"
    users, items, dom = batch["user"], batch["item"], batch["domain"]
    ts = (batch["offset"] + day_start).tolist()
    cat_s = [f"c{i}" for i in range(c.categories)]
    hist = world.hist[users].tolist()
    hist_len = world.hist_len[users].tolist()
    cols = zip(
        ts, batch["click"].tolist(), users.tolist(), items.tolist(),
        world.gender[users].tolist(), world.age[users].tolist(), world.city[users].tolist(),
        world.dom_scenario[dom].tolist(), world.dom_position[dom].tolist(),
        world.dom_segment[dom].tolist(), world.category[items].tolist(),
        world.brand[items].tolist(), world.price[items].tolist(), hist, hist_len,
        strict=True,
    )
    out = []
    for i, (t, clk, u, it, gen, age, city, s, p, g, cat, br, price, h, hl) in enumerate(cols):
        out.append({
            "request_id": f"{prefix}{i:06d}", "ts": t, "click": clk,
            "user_id": f"u{u}", "item_id": f"i{it}",
            "gender": "m" if gen else "f", "age_level": str(age), "city_tier": str(city + 1),
            "scenario": f"s{s}", "position": f"p{p}", "user_segment": f"g{g}",
            "category": cat_s[cat], "brand": f"b{br}", "price": price,
            "hist_categories": [cat_s[x] for x in h[:hl]],
        })
    return out


def sample_day(world: World, source: str, date: datetime.date) -> list[dict]:
    """The rows of `source` ("natural" or "ad") for the world's current day, dated `date`."""
    c = world.config
    n = c.natural_rows_per_day if source == "natural" else c.ad_rows_per_day
    return _rows(world, world.sample(source, n), date, source)


def _write_jsonl_gz(path: str, rows: list[dict], compresslevel: int) -> None:
    """Write rows atomically: temp file in the same folder, then rename (mtime=0: stable bytes)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows).encode()
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            with gzip.GzipFile(filename="", mode="wb", fileobj=f,
                               compresslevel=compresslevel, mtime=0) as gz:
                gz.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def simulate(
    out_dir: str,
    start: datetime.date,
    days: int,
    config: SimConfig,
) -> dict:
    """Simulate `days` days from `start` into out_dir/{natural,ad}/date=YYYY-MM-DD/*.jsonl.gz.

    Returns {"natural": {"rows": n, "clicks": c}, "ad": {...}, "domains": distinct domains}.
    """
    if not isinstance(days, int) or isinstance(days, bool) or days < 1:
        raise ValueError(f"days must be an integer >= 1, got {days!r}")
    if not isinstance(config, SimConfig):
        raise ValueError(f"config must be a SimConfig, got {type(config).__name__}")
    t0 = time.monotonic()
    summary: dict = {s: {"rows": 0, "clicks": 0} for s in SOURCES}
    seen_domains = np.zeros(config.domains, bool)
    world = World(config)
    for day in range(days):
        if day:
            world.advance()
        date = start + datetime.timedelta(days=day)
        for source in SOURCES:
            n = config.natural_rows_per_day if source == "natural" else config.ad_rows_per_day
            batch = world.sample(source, n)
            seen_domains[batch["domain"]] = True
            rows = _rows(world, batch, date, source)
            path = os.path.join(out_dir, source, f"date={date:%Y-%m-%d}", "part-00000.jsonl.gz")
            _write_jsonl_gz(path, rows, config.compresslevel)
            summary[source]["rows"] += n
            summary[source]["clicks"] += int(batch["click"].sum())
        if (day + 1) % 10 == 0 or day + 1 == days:
            nat, ad = summary["natural"], summary["ad"]
            logger.info(
                f"simulate: {day + 1}/{days} days (to {date:%Y-%m-%d}): "
                f"natural {nat['rows']} rows ctr {nat['clicks'] / nat['rows']:.4f}, "
                f"ad {ad['rows']} rows ctr {ad['clicks'] / ad['rows']:.4f}, "
                f"{world.n_users} users, {world.n_items} items, "
                f"{time.monotonic() - t0:.1f}s"
            )
    summary["domains"] = int(seen_domains.sum())
    return summary


__all__ = ["SOURCES", "SimConfig", "World", "sample_day", "simulate"]
