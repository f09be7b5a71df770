"""Data drift: a day with a collapsed feature and half the rows is flagged against the days
before it, and the gate keeps a model that learned from it out of serving."""

from __future__ import annotations

import datetime as dt
import json
import logging
import random

from ecdctr.data.drift import compare, read_drift
from ecdctr.spec.feature_spec import load_spec
from pipelines.build import build

SPEC = load_spec("features/default.yaml")
START = dt.date(2024, 3, 1)


def _rows(day: dt.date, n: int, collapsed: bool, rng: random.Random) -> list[dict]:
    ts = int(dt.datetime(day.year, day.month, day.day, 12, tzinfo=dt.UTC).timestamp())
    return [{"request_id": f"{day}-{i}", "ts": ts, "click": int(rng.random() < 0.1),
             "user_id": f"u{rng.randrange(50)}", "item_id": f"i{rng.randrange(30)}",
             "gender": "f" if collapsed else rng.choice("fmu"),
             "age_level": "1" if collapsed else str(rng.randrange(1, 7)), "city_tier": "1",
             "scenario": "feed", "position": "1", "user_segment": "new", "category": "c1",
             "brand": "b1", "price": rng.uniform(5, 15), "hist_categories": ["c1"]}
            for i in range(n)]


def test_a_collapsed_feature_and_half_the_rows_are_flagged(tmp_path, logged):
    rng = random.Random(0)
    for k in range(6):
        day = START + dt.timedelta(days=k)
        folder = tmp_path / "logs" / "ad" / f"date={day}"
        folder.mkdir(parents=True)
        rows = _rows(day, 200 if k == 5 else 400, collapsed=k == 5, rng=rng)
        (folder / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = build(SPEC, str(tmp_path / "logs"), str(tmp_path / "work"))
    flagged = {r["date"]: read_drift(str(tmp_path / "work"), "ad", dt.date.fromisoformat(r["date"]))
               for r in results}
    assert all(not flagged[(START + dt.timedelta(days=k)).isoformat()] for k in range(5))
    broken = flagged[(START + dt.timedelta(days=5)).isoformat()]
    assert any(w.startswith("rows 200") for w in broken)
    assert any(w.startswith("age_level: collapsed") for w in broken)
    assert sum(r.levelno == logging.WARNING and "drift in ad 2024-03-06" in r.getMessage()
               for r in logged.records) == len(broken)


def test_too_few_days_are_not_compared_and_a_ctr_jump_is():
    usual = {"rows": 1000, "clicks": 50, "ctr": 0.05, "means": {"price": {"mean": 10.0, "stderr": 0.1}},
             "tokens": {"gender": {"distinct": 3, "top_share": 0.4}}}
    assert compare({**usual, "clicks": 500, "ctr": 0.5}, [usual, usual]) == []
    warnings = compare({**usual, "clicks": 150, "ctr": 0.15,
                        "means": {"price": {"mean": 30.0, "stderr": 1.0}}}, [usual] * 3)
    assert [w.split()[0] for w in warnings] == ["CTR", "price:"]
    assert compare(usual, [usual] * 7) == []
    noisy = {**usual, "means": {"price": {"mean": 16.0, "stderr": 4.0}}}  # a small, heavy-tailed day
    assert compare(noisy, [usual] * 3) == []


def _day(date, rows, ctr=0.3, price=10.0):
    clicks = round(rows * ctr)
    return {"rows": rows, "clicks": clicks, "ctr": clicks / rows if rows else 0.0,
            "date": date.isoformat(), "tokens": {},
            "means": {"price": {"mean": price, "stderr": 8.0 / max(rows, 1) ** 0.5}}}


# ad days of the size the real logs have: 16 to 133 rows, CTR around 0.3 (their spread)
SMALL = [16, 133, 40, 90, 25, 60, 110, 35, 71, 48, 120, 22, 66, 85]
SMALL_CTR = [0.25, 0.33, 0.2, 0.31, 0.4, 0.28, 0.3, 0.37, 0.27, 0.29, 0.32, 0.18, 0.35, 0.3]


def test_the_natural_spread_of_small_days_is_not_drift():
    trailing = [_day(START + dt.timedelta(days=k), rows, ctr)
                for k, (rows, ctr) in enumerate(zip(SMALL, SMALL_CTR, strict=True))]
    date = START + dt.timedelta(days=len(SMALL))
    for rows, ctr in ((16, 0.5), (27, 0.52), (133, 0.2), (30, 0.0)):
        assert compare(_day(date, rows, ctr), trailing) == [], (rows, ctr)


def test_a_real_shift_on_small_days_is_still_flagged():
    trailing = [_day(START + dt.timedelta(days=k), rows, ctr)
                for k, (rows, ctr) in enumerate(zip(SMALL, SMALL_CTR, strict=True))]
    date = START + dt.timedelta(days=len(SMALL))
    assert [w.split()[0] for w in compare(_day(date, 0), trailing)] == ["rows"]  # logs lost
    assert [w.split()[0] for w in compare(_day(date, 2000, 0.3), trailing)] == ["rows"]
    assert [w.split()[0] for w in compare(_day(date, 120, 0.95), trailing)] == ["CTR"]


def test_weekends_are_compared_with_weekends():
    """Weekend traffic at a third of weekdays' is the usual weekly cycle, not drift; the same
    drop on a weekday is."""
    monday = dt.date(2024, 3, 4)
    trailing = [_day(monday + dt.timedelta(days=k),
                     3000 if (monday + dt.timedelta(days=k)).weekday() >= 5 else 9000)
                for k in range(28)]
    sunday, tuesday = monday + dt.timedelta(days=34), monday + dt.timedelta(days=29)
    assert compare(_day(sunday, 3100), trailing) == []
    assert [w.split()[0] for w in compare(_day(tuesday, 3100), trailing)] == ["rows"]
