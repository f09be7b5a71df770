"""Tests of the log simulator: layout, row schema, determinism and the world's structure."""

import dataclasses
import datetime
import gzip
import json
import os
from collections import Counter

import numpy as np
import pytest

from ecdctr.data.simulator import SimConfig, World, simulate

START = datetime.date(2026, 3, 1)
DAYS = 3
TINY = SimConfig(
    users=500, items=200, new_users_per_day=20, new_items_per_day=10, natural_rows_per_day=400
)
KEYS = {
    "request_id": str, "ts": int, "click": int, "user_id": str, "item_id": str, "gender": str,
    "age_level": str, "city_tier": str, "scenario": str, "position": str, "user_segment": str,
    "category": str, "brand": str, "price": float, "hist_categories": list,
}


def read_day(out_dir, source, date):
    path = os.path.join(out_dir, source, f"date={date:%Y-%m-%d}", "part-00000.jsonl.gz")
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def read_all(out_dir, days=DAYS):
    return {
        source: [read_day(out_dir, source, START + datetime.timedelta(d)) for d in range(days)]
        for source in ("natural", "ad")
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tiny"))
    summary = simulate(out, START, DAYS, TINY)
    return out, summary, read_all(out)


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    """Enough rows for the CTR comparison to be reliable (still about a second)."""
    cfg = SimConfig(users=2000, items=600, natural_rows_per_day=8000, seed=3)
    out = str(tmp_path_factory.mktemp("medium"))
    summary = simulate(out, START, 2, cfg)
    return cfg, summary, read_all(out, days=2)


def test_layout_and_rows(tiny):
    out, summary, data = tiny
    for source in ("natural", "ad"):
        dirs = sorted(os.listdir(os.path.join(out, source)))
        assert dirs == [f"date={START + datetime.timedelta(d):%Y-%m-%d}" for d in range(DAYS)]
        for d in dirs:  # only the final file: no temp leftovers
            assert os.listdir(os.path.join(out, source, d)) == ["part-00000.jsonl.gz"]
    assert summary["natural"]["rows"] == DAYS * 400 and summary["ad"]["rows"] == DAYS * 40
    for source, days in data.items():
        assert summary[source]["clicks"] == sum(r["click"] for rows in days for r in rows)
        for d, rows in enumerate(days):
            start = int(datetime.datetime(2026, 3, 1 + d, tzinfo=datetime.UTC).timestamp())
            assert len({r["request_id"] for r in rows}) == len(rows)
            for r in rows:
                assert set(r) == set(KEYS)
                for key, typ in KEYS.items():
                    assert type(r[key]) is typ, (key, r[key])
                assert start <= r["ts"] < start + 86400
                assert r["click"] in (0, 1)
                assert r["request_id"].startswith(f"{source[0]}2026030{1 + d}-")
                assert r["user_id"][0] == "u" and r["item_id"][0] == "i"
                assert r["gender"] in ("f", "m") and r["age_level"] in "0123456"
                assert r["city_tier"] in ("1", "2", "3", "4")
                assert r["scenario"] in {f"s{i}" for i in range(12)}
                assert r["position"] in {f"p{i}" for i in range(5)}
                assert r["user_segment"] in {f"g{i}" for i in range(6)}
                assert r["category"] in {f"c{i}" for i in range(50)}
                assert r["brand"] in {f"b{i}" for i in range(500)}
                assert r["price"] > 0 and round(r["price"], 2) == r["price"]
                assert len(r["hist_categories"]) <= 5
                assert all(c in {f"c{i}" for i in range(50)} for c in r["hist_categories"])


def test_user_profile_is_stable(tiny):
    _, _, data = tiny
    profiles = {}
    for days in data.values():
        for rows in days:
            for r in rows:
                p = (r["gender"], r["age_level"], r["city_tier"], r["user_segment"])
                assert profiles.setdefault(r["user_id"], p) == p


def test_deterministic_per_seed(tiny, tmp_path):
    out, _, _ = tiny
    simulate(str(tmp_path / "same"), START, DAYS, TINY)
    simulate(str(tmp_path / "other"), START, DAYS, dataclasses.replace(TINY, seed=1))
    for source in ("natural", "ad"):
        for d in range(DAYS):
            rel = os.path.join(source, f"date={START + datetime.timedelta(d):%Y-%m-%d}",
                               "part-00000.jsonl.gz")
            with open(os.path.join(out, rel), "rb") as a, open(tmp_path / "same" / rel, "rb") as b:
                first = a.read()
                assert first == b.read()
            with open(tmp_path / "other" / rel, "rb") as c:
                assert first != c.read()


def test_ad_traffic(medium):
    cfg, summary, data = medium
    nat, ad = summary["natural"], summary["ad"]
    assert nat["rows"] >= 10 * ad["rows"] > 0
    for d in range(2):
        assert len(data["natural"][d]) >= 10 * len(data["ad"][d])
    assert ad["clicks"] / ad["rows"] < nat["clicks"] / nat["rows"]
    assert 0.02 < nat["clicks"] / nat["rows"] < 0.1
    # ad rows show ad items only; ad items appear in natural traffic too
    world = World(cfg)
    world.advance()
    ad_items = {int(r["item_id"][1:]) for rows in data["ad"] for r in rows}
    nat_items = {int(r["item_id"][1:]) for rows in data["natural"] for r in rows}
    assert all(world.is_ad[i] for i in ad_items)
    assert ad_items & nat_items
    assert any(world.is_ad[i] for i in nat_items) and not all(world.is_ad[i] for i in nat_items)
    # ads reach fewer users than natural traffic
    ad_users = {r["user_id"] for r in data["ad"][0]}
    nat_users = {r["user_id"] for r in data["natural"][0]}
    assert len(ad_users) < len(nat_users)


def test_long_tail_domains(tmp_path):
    cfg = SimConfig(users=3000, items=500, natural_rows_per_day=20000)
    summary = simulate(str(tmp_path), START, 1, cfg)
    rows = read_day(str(tmp_path), "natural", START)
    sizes = sorted(
        Counter((r["scenario"], r["position"], r["user_segment"]) for r in rows).values()
    )
    assert len(sizes) > 100 and summary["domains"] >= len(sizes)
    assert sizes[-1] > 20 * np.median(sizes)


def test_new_users_arrive(tiny):
    _, _, data = tiny
    day1 = {r["user_id"] for source in data.values() for r in source[0]}
    later = [{r["user_id"] for source in data.values() for r in source[d]} for d in (1, 2)]
    new_ids = {u for users in later for u in users if int(u[1:]) >= TINY.users}
    assert new_ids and not new_ids & day1
    assert all(int(u[1:]) < TINY.users for u in day1)
    # new users start with (almost) no history
    for d in (1, 2):
        for r in data["natural"][d]:
            if int(r["user_id"][1:]) >= TINY.users:
                assert len(r["hist_categories"]) <= d


@pytest.mark.parametrize(
    "knob, value",
    [
        ("ad_ratio", 0.2),
        ("ad_ratio", 0.0),
        ("users", 0),
        ("items", -1),
        ("natural_rows_per_day", 0),
        ("new_users_per_day", -5),
        ("latent_dim", 0),
        ("ad_item_share", 0.0),
        ("segments", 5),
    ],
)
def test_bad_config(knob, value):
    with pytest.raises(ValueError, match=knob):
        SimConfig(**{knob: value})


def test_bad_days(tmp_path):
    with pytest.raises(ValueError, match="days"):
        simulate(str(tmp_path), START, 0, TINY)
    with pytest.raises(ValueError, match="natural_rows_per_day"):
        SimConfig(natural_rows_per_day=5)  # 5 * 0.1 < 1 ad row per day


def test_intermittent_users_leave_and_come_back(tmp_path):
    """With away_rate, active users vanish for days and return; with it off, the logs are
    the same as before the knob existed (its draws use a stream of their own)."""
    cfg = SimConfig(users=300, items=100, new_users_per_day=0, natural_rows_per_day=3000, seed=2)
    days = 12

    def presence(config, out):
        simulate(str(out), START, days, config)
        data = read_all(str(out), days)
        return [{r["user_id"] for r in data["natural"][d]} for d in range(days)]

    steady = presence(cfg, tmp_path / "steady")
    again = presence(dataclasses.replace(cfg, away_rate=0.0, return_rate=0.9), tmp_path / "same")
    assert steady == again  # return_rate alone changes nothing while nobody leaves
    away = presence(dataclasses.replace(cfg, away_rate=0.15, return_rate=0.15), tmp_path / "away")

    def gaps(days_seen):  # users seen on day 0 and later, but absent for 5+ days in between
        return {u for u in days_seen[0]
                if any(u in days_seen[d] for d in range(6, days))
                and not any(u in days_seen[d] for d in range(1, 6))}

    assert len(gaps(away)) > len(gaps(steady)) + 10
    assert sum(map(len, away)) < sum(map(len, steady))  # fewer distinct users present a day
