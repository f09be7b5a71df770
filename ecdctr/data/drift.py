"""Data drift: each newly built day compared with the trailing built days of its source (rows,
CTR, numeric means, the shape of every vocabulary feature), warnings saved beside the stats."""

from __future__ import annotations

import datetime as dt
import json
import math
import statistics
from collections.abc import Callable, Sequence

from ecdctr.data.vocab import merge_counts, read_stats
from ecdctr.io import layout, storage
from ecdctr.spec.feature_spec import Spec

TRAILING_DAYS = 7  # built days before a day that it is compared with
MIN_TRAILING = 3  # fewer built days before it: no comparison yet
ROWS_RATIO = 1.6  # rows below 1/1.6 (a drop of 37%) or above 1.6x the trailing median
CTR_Z = 5.0  # clicks (or a mean) this many standard errors off the trailing days ...
CTR_RELATIVE = 0.3  # ... and the CTR off by this share of it
MEAN_RELATIVE = 0.5  # ... and a numeric column's mean off its trailing median by this share
COLLAPSED_SHARE = 0.9  # one token holds this share of a feature's rows ...
USUAL_SHARE = 0.5  # ... where its most frequent token usually holds less than this
DISTINCT_RATIO = 0.2  # or fewer than this share of the usual distinct tokens


def drift_path(work: str, source: str, date: dt.date) -> str:
    """Where the drift warnings of one built day are kept."""
    return layout.drift_file(work, source, date)


def profile(work: str, spec: Spec, source: str, date: dt.date) -> dict:
    """What drift looks at in one built day: rows, clicks, CTR, numeric means, and per
    vocabulary feature its distinct tokens and the share of its most frequent one."""
    stats = read_stats(work, source, date)
    means = {}
    for column, values in stats.get("numeric", {}).items():
        n = values.get("count") or 0
        if n:
            mean = values["sum"] / n
            variance = max(values.get("sumsq", 0.0) / n - mean * mean, 0.0)
            means[column] = {"mean": mean, "stderr": math.sqrt(variance / n)}
    tokens = {}
    for feature in spec.features:
        if feature.uses_vocab:
            counts = merge_counts(work, feature.name, [(source, date)])
            total = sum(counts.values())
            if total:
                tokens[feature.name] = {"distinct": len(counts),
                                        "top_share": max(counts.values()) / total}
    return {"rows": stats["rows_written"], "clicks": stats.get("clicks", 0),
            "ctr": stats.get("ctr", 0.0), "means": means, "tokens": tokens}


def compare(day: dict, trailing: Sequence[dict]) -> list[str]:
    """Warnings for a day's profile against the profiles of the days before it."""
    if len(trailing) < MIN_TRAILING:
        return []
    warnings = []
    rows = statistics.median(p["rows"] for p in trailing)
    if rows and not rows / ROWS_RATIO <= day["rows"] <= rows * ROWS_RATIO:
        warnings.append(f"rows {day['rows']:,} vs a trailing median of {rows:,.0f}")
    clicks, seen = sum(p["clicks"] for p in trailing), sum(p["rows"] for p in trailing)
    ctr = clicks / seen if seen else 0.0
    if 0 < ctr < 1 and day["rows"]:
        sigma = math.sqrt(day["rows"] * ctr * (1 - ctr))
        if (abs(day["clicks"] - day["rows"] * ctr) > CTR_Z * sigma
                and abs(day["ctr"] / ctr - 1) > CTR_RELATIVE):
            warnings.append(f"CTR {day['ctr']:.4f} vs {ctr:.4f} over the trailing days")
    for column, now in sorted(day["means"].items()):
        usual = [p["means"][column]["mean"] for p in trailing if column in p["means"]]
        if len(usual) >= MIN_TRAILING:
            median, mean = statistics.median(usual), now["mean"]
            # off by a share AND beyond what the day's sample size explains (heavy tails)
            if (median and abs(mean / median - 1) > MEAN_RELATIVE
                    and abs(mean - median) > CTR_Z * now["stderr"]):
                warnings.append(f"{column}: mean {mean:.4g} vs a trailing median of {median:.4g}")
    for name, now in sorted(day["tokens"].items()):
        usual = [p["tokens"][name] for p in trailing if name in p["tokens"]]
        if len(usual) < MIN_TRAILING:
            continue
        share = statistics.median(u["top_share"] for u in usual)
        distinct = statistics.median(u["distinct"] for u in usual)
        if now["top_share"] >= COLLAPSED_SHARE and share < USUAL_SHARE:
            warnings.append(f"{name}: collapsed, one token holds {now['top_share']:.0%} of the "
                            f"rows (usually at most {share:.0%})")
        elif distinct >= 5 and now["distinct"] < DISTINCT_RATIO * distinct:
            warnings.append(f"{name}: {now['distinct']} distinct tokens vs a trailing median of "
                            f"{distinct:.0f}")
    return warnings


def check_days(work: str, spec: Spec, source: str, days: Sequence[dt.date],
               built: Sequence[dt.date], log: Callable[[str], None] = print) -> dict[str, list[str]]:
    """Compares each of `days` with the TRAILING_DAYS built days before it, logs and saves the
    warnings (drift_path); returns {day: warnings}."""
    found = {}
    profiles: dict[dt.date, dict] = {}  # each day's profile read once (a first build has many)

    def of(day: dt.date) -> dict:
        if day not in profiles:
            profiles[day] = profile(work, spec, source, day)
        return profiles[day]

    for date in sorted(days):
        before = [d for d in built if d < date][-TRAILING_DAYS:]
        warnings = compare(of(date), [of(d) for d in before])
        storage.write_text(drift_path(work, source, date),
                           json.dumps({"date": date.isoformat(), "source": source,
                                       "compared_with": [d.isoformat() for d in before],
                                       "warnings": warnings}, indent=2))
        for warning in warnings:
            log(f"warning: drift in {source} {date}: {warning}")
        found[date.isoformat()] = warnings
    return found


def read_drift(work: str, source: str, date: dt.date) -> list[str]:
    """The saved drift warnings of a built day ([] if it was never checked)."""
    try:
        return json.loads(storage.read_text(drift_path(work, source, date)))["warnings"]
    except FileNotFoundError:
        return []
