"""Data drift: each newly built day compared with the trailing built days of its source (rows,
CTR, numeric means, the shape of every vocabulary feature), warnings saved beside the stats."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import statistics
from collections.abc import Sequence

from ecdctr.data.vocab import merge_counts, read_stats
from ecdctr.io import layout, storage
from ecdctr.spec.feature_spec import Spec

logger = logging.getLogger(__name__)

TRAILING_DAYS = 28  # built days before a day that it is compared with (4 of each weekday)
MIN_TRAILING = 3  # fewer built days before it: no comparison yet
MIN_WEEKDAY = 2  # trailing days of the day's weekday needed to judge its rows by them alone
ROWS_RATIO = 1.6  # rows off the expected level by this factor (a drop of 37%, a rise of 60%) ...
ROWS_Z = 3.0  # ... and by this many of the trailing days' own spreads (robust, on log rows;
#               3 rather than 4: as few false alarms, more shifts caught (docs/quality.md)
CTR_Z = 5.0  # clicks (or a mean) this many standard errors off the trailing days, counting
#              the day's sampling noise and the trailing days' spread beyond it ...
CTR_RELATIVE = 0.3  # ... and the CTR off by this share of it
MEAN_RELATIVE = 0.5  # ... and a numeric column's mean off its trailing median by this share
MAD_NORMAL = 1.4826  # median absolute deviation x this = a normal's standard deviation
MEDIAN_CHI2 = 0.4549  # median of a chi-square with 1 degree of freedom
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
    return {"rows": stats["rows_written"], "clicks": stats.get("clicks", 0), "date": date.isoformat(),
            "ctr": stats.get("ctr", 0.0), "means": means, "tokens": tokens}


def compare(day: dict, trailing: Sequence[dict]) -> list[str]:
    """Warnings for a day's profile against the profiles of the days before it. Rows, CTR and
    means are judged by the evidence they hold: a change must be large (the *_RATIO and
    *_RELATIVE shares) and beyond what the day's sample size and the trailing days' own spread
    explain, so the natural spread of small days is not drift (docs/quality.md)."""
    if len(trailing) < MIN_TRAILING:
        return []
    warnings = []
    rows = _rows_warning(day, trailing)
    if rows:
        warnings.append(rows)
    ctr = _ctr_warning(day, trailing)
    if ctr:
        warnings.append(ctr)
    for column, now in sorted(day["means"].items()):
        usual = [p["means"][column] for p in trailing if column in p["means"]]
        if len(usual) >= MIN_TRAILING:
            median, mean = statistics.median(u["mean"] for u in usual), now["mean"]
            # the spread of the trailing means beyond their own standard errors (heavy tails,
            # a changing mix), robustly: median of squared deviations over a chi-square's
            spread = _excess_variance([(u["mean"] - median, u["stderr"] ** 2) for u in usual])
            if (median and abs(mean / median - 1) > MEAN_RELATIVE
                    and abs(mean - median) > CTR_Z * math.sqrt(now["stderr"] ** 2 + spread)):
                warnings.append(f"{column}: mean {mean:.4g} vs a trailing median of {median:.4g}")
    warnings += _token_warnings(day, trailing)
    return warnings


def _rows_warning(day: dict, trailing: Sequence[dict]) -> str | None:
    """Rows against the level of the trailing days (of the same weekday when there are
    MIN_WEEKDAY of them), allowing ROWS_Z times the spread the trailing days show around the
    level computed the same way from the others (leave one out), never less than Poisson's."""
    level, basis = _rows_level(day, trailing)
    if not level:
        return None
    residuals = [_log_ratio(p["rows"], _rows_level(p, [q for q in trailing if q is not p])[0])
                 for p in trailing]
    spread = max(MAD_NORMAL * statistics.median(abs(r) for r in residuals), 1 / math.sqrt(level))
    off = _log_ratio(day["rows"], level)
    if abs(off) > math.log(ROWS_RATIO) and abs(off) > ROWS_Z * spread:
        return (f"rows {day['rows']:,} vs a trailing median of {level:,.0f} ({basis}; usual "
                f"spread x{math.exp(spread):.2f})")
    return None


def _rows_level(day: dict, trailing: Sequence[dict]) -> tuple[float, str]:
    """(median rows, what it is the median of): the trailing days of the day's weekday when
    there are MIN_WEEKDAY of them, else all."""
    weekday = _weekday(day)
    same = [p["rows"] for p in trailing if weekday is not None and _weekday(p) == weekday]
    if len(same) >= MIN_WEEKDAY:
        return statistics.median(same), f"{len(same)} same weekdays"
    return (statistics.median(p["rows"] for p in trailing) if trailing else 0.0,
            f"{len(trailing)} days")


def _weekday(profile: dict) -> int | None:
    date = profile.get("date")
    return dt.date.fromisoformat(date).weekday() if date else None


def _log_ratio(rows: float, level: float) -> float:
    return math.log(max(rows, 0.5) / max(level, 0.5))  # half a row: a day with none is finite


def _ctr_warning(day: dict, trailing: Sequence[dict]) -> str | None:
    """CTR against the trailing days' pooled CTR: binomial noise of the day and of the pool,
    plus the day-to-day spread of the CTR beyond binomial noise seen in the trailing days."""
    clicks, seen = sum(p["clicks"] for p in trailing), sum(p["rows"] for p in trailing)
    ctr = clicks / seen if seen else 0.0
    if not (0 < ctr < 1 and day["rows"]):
        return None
    binomial = ctr * (1 - ctr)
    spread = _excess_variance([(p["clicks"] / p["rows"] - ctr, binomial / p["rows"])
                               for p in trailing if p["rows"]])
    sigma = math.sqrt(binomial / day["rows"] + binomial / seen + spread)
    observed = day["clicks"] / day["rows"]
    if abs(observed - ctr) > CTR_Z * sigma and abs(observed / ctr - 1) > CTR_RELATIVE:
        return f"CTR {observed:.4f} vs {ctr:.4f} over the trailing days"
    return None


def _excess_variance(deviations: Sequence[tuple[float, float]]) -> float:
    """Day-to-day variance beyond sampling noise from (deviation, its sampling variance)
    pairs: the median of deviation^2 / MEDIAN_CHI2 - sampling variance, at least 0 (a
    median, so one odd trailing day does not widen it)."""
    if not deviations:
        return 0.0
    return max(statistics.median(d * d / MEDIAN_CHI2 - v for d, v in deviations), 0.0)


def _token_warnings(day: dict, trailing: Sequence[dict]) -> list[str]:
    """A vocabulary feature collapsed onto one token, or far fewer distinct tokens."""
    warnings = []
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
               built: Sequence[dt.date]) -> dict[str, list[str]]:
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
            logger.warning(f"drift in {source} {date}: {warning}")
        found[date.isoformat()] = warnings
    return found


def read_drift(work: str, source: str, date: dt.date) -> list[str]:
    """The saved drift warnings of a built day ([] if it was never checked)."""
    try:
        return json.loads(storage.read_text(drift_path(work, source, date)))["warnings"]
    except FileNotFoundError:
        return []
