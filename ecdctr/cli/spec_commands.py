"""`ecdctr spec check` and `ecdctr spec diff`: a spec against its logs, and what a spec change does."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import json
from collections.abc import Iterator, Sequence
from typing import Any

from ecdctr.cli.logs import kept_lines
from ecdctr.spec.feature_spec import Feature, Spec, feature_diff, feature_fingerprints, load_spec

EXAMPLES_PER_REASON = 2


# ---------------------------------------------------------------- spec check

def summary(spec: Spec) -> dict:
    """What a valid spec declares: features by kind, roles, columns and fingerprint."""
    kinds: dict[str, list[str]] = collections.defaultdict(list)
    for f in spec.features:
        kinds[f.kind].append(f.name)
    return {
        "path": spec.path, "fingerprint": spec.fingerprint,
        "label": spec.label, "timestamp": spec.timestamp, "request_id": spec.request_id,
        "group_by": spec.group_by,
        "features": {k: kinds[k] for k in sorted(kinds)},
        "domain_features": [f.name for f in spec.domain_features],
        "tpm_features": [f.name for f in spec.tpm_features],
        "entities": {e: f.name for e, f in sorted(spec.entities.items())},
        "columns": list(spec.columns),
    }


def sample_logs(spec: Spec, logs: str, days: int, rows: int,
                sources: Sequence[str] | None = None) -> dict:
    """Runs the build's reading and row checks on a sample: the newest `days` partitions of
    each source under <logs>/<source>/date=YYYY-MM-DD/, up to `rows` rows a day. Per source:
    rows sampled, the rows the build would quarantine by reason (with examples), the spec's
    columns missing from the rows (share of rows) and the log columns the spec does not read."""
    from ecdctr.data.log_partitions import LOGS_LAYOUT, SOURCES, find_partitions
    from ecdctr.io import beam_files, storage

    logs = storage.absolute(logs)
    beam_files.configure((), (logs,))
    sources = list(sources or SOURCES)
    unreadable: dict[tuple[str, str], list[dict]] = {}
    with kept_lines(find_partitions.__module__) as notes:
        found = find_partitions(logs, sources, None, None, unreadable)
    if not found:
        raise ValueError(f"no log partitions found under {logs!r} for sources {sources}. "
                         f"Expected layout: {LOGS_LAYOUT}")
    report: dict[str, Any] = {"logs": logs, "days": days, "rows_per_day": rows, "sources": {},
                              "notes": notes}
    for source in sources:
        dates = sorted(d for s, d in found if s == source)[-days:]
        report["sources"][source] = _sample_source(
            spec, source, [(d, found[(source, d)]) for d in dates], rows,
            [f for d in dates for f in unreadable.get((source, d), [])])
    return report


def _sample_source(spec: Spec, source: str, partitions: list[tuple[str, list[str]]],
                   rows: int, unreadable: list[dict]) -> dict:
    """One source's sample (see sample_logs); each row goes through the build's own
    validation step (readers.RowChecker), duplicates are found as the build does."""
    from ecdctr.data.readers import ERROR, TEXT, RowChecker, decode_json
    from ecdctr.data.rows import RowError, RowParser, is_missing

    files = [(source, date, path) for date, paths in partitions for path in paths]
    checker = RowChecker(spec)
    parser = RowParser(spec)
    sampled = objects = 0
    reasons: dict[str, dict] = {}
    missing: collections.Counter = collections.Counter()
    unread: collections.Counter = collections.Counter()

    def quarantine(reason: str, path: str, line: int, message: str) -> None:
        entry = reasons.setdefault(reason, {"rows": 0, "examples": []})
        entry["rows"] += 1
        if len(entry["examples"]) < EXAMPLES_PER_REASON:
            entry["examples"].append({"where": f"{path}:{line}", "message": message})

    seen: set[str] = set()  # request ids kept so far this day: later ones are duplicates
    seen_day = None  # the day whose request ids `seen` holds
    for day, path, line, kind, payload in _sampled_rows(partitions, rows, spec.max_line_bytes):
        if day != seen_day:
            seen, seen_day = set(), day
        sampled += 1
        if kind != ERROR:
            try:
                row = decode_json(payload) if kind == TEXT else payload
            except RowError:
                row = None
            if isinstance(row, dict):
                objects += 1
                missing.update(c for c in spec.columns if is_missing(row.get(c)))
                unread.update(str(c) for c in row if c not in parser.known)
        try:
            request_id = checker.check(kind, payload, day)[0].request_id
        except RowError as e:
            quarantine(e.reason, path, line, str(e))
        else:
            if request_id in seen:
                quarantine("duplicate_request_id", path, line,
                           f"request_id {request_id[:100]!r} already seen; the "
                           f"first occurrence is kept")
            else:
                seen.add(request_id)
    return {
        "days": [d for d, _ in partitions], "files": len(files), "rows_sampled": sampled,
        "rows_quarantined": sum(r["rows"] for r in reasons.values()),
        "quarantine_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1]["rows"])),
        "missing_columns": {c: round(missing[c] / objects, 4) for c in spec.columns
                            if missing[c]} if objects else {},
        "unread_columns": sorted(unread),
        "unreadable_files": unreadable,
    }


def _sampled_rows(partitions: list[tuple[str, list[str]]], rows: int,
                  max_line_bytes: int) -> Iterator[tuple[dt.date, str, int, str, Any]]:
    """The first `rows` rows of each day, as the build reads them: (day, path, line, kind,
    payload)."""
    from ecdctr.data.readers import FileCounters, read_log_file

    for date, paths in partitions:
        day = dt.date.fromisoformat(date)
        taken = 0
        for path in paths:
            if taken >= rows:
                break
            reader = read_log_file(path, FileCounters(), max_line_bytes)
            with contextlib.closing(reader):
                for line, kind, payload in reader:
                    taken += 1
                    yield day, path, line, kind, payload
                    if taken >= rows:
                        break


def check(path: str, logs: str | None = None, days: int = 3, rows: int = 1000) -> tuple[dict, int]:
    """(report, exit status) of `ecdctr spec check`: 0 valid and, with logs, no sampled row
    or log file the build would reject; 1 valid but some would be (quarantined rows,
    unreadable files). An invalid spec raises ConfigError (the CLI's status 2)."""
    spec = load_spec(path)
    report: dict[str, Any] = {"spec": summary(spec)}
    status = 0
    if logs is not None:
        report["logs"] = sample_logs(spec, logs, days, rows)
        if any(s["rows_quarantined"] or s["unreadable_files"]
               for s in report["logs"]["sources"].values()):
            status = 1
    return report, status


def format_check(report: dict) -> str:
    """The text `ecdctr spec check` prints."""
    s = report["spec"]
    n = sum(len(v) for v in s["features"].values())
    out = [f"spec {s['path']}: valid, fingerprint {s['fingerprint']}",
           f"features: {n} (" + ", ".join(f"{k} {len(v)}" for k, v in s["features"].items()) + ")"]
    out += [f"  {k + ':':<18}{', '.join(v)}" for k, v in s["features"].items()]
    out += [f"label {s['label']}, timestamp {s['timestamp']}, request_id {s['request_id']}, "
            f"group_by {s['group_by']}",
            f"domain features: {', '.join(s['domain_features']) or 'none'}",
            f"TPM features: {', '.join(s['tpm_features'])}",
            "entities: " + ", ".join(f"{e}={f}" for e, f in s["entities"].items()),
            f"columns read: {', '.join(s['columns'])}"]
    logs = report.get("logs")
    if logs is None:
        return "\n".join(out)
    out.append(f"logs {logs['logs']}: newest {logs['days']} day(s) per source, up to "
               f"{logs['rows_per_day']} rows a day, checked as the build checks them")
    total = bad = 0
    for source, r in logs["sources"].items():
        total += r["rows_sampled"]
        bad += r["rows_quarantined"]
        if not r["days"]:
            out.append(f"{source}: no partitions")
            continue
        span = r["days"][0] + (f"..{r['days'][-1]}" if len(r["days"]) > 1 else "")
        out.append(f"{source}: {len(r['days'])} day(s) {span}, {r['files']} file(s), "
                   f"{r['rows_sampled']} rows sampled, {r['rows_quarantined']} would be quarantined")
        for reason, q in r["quarantine_reasons"].items():
            out.append(f"  {reason}: {q['rows']} row(s), e.g. "
                       + "; ".join(e["where"] for e in q["examples"])
                       + f" ({q['examples'][0]['message'][:200]})")
        for f in r["unreadable_files"]:
            out.append(f"  unreadable file (the build leaves it out): {f['path']} ({f['reason']})")
        if r["missing_columns"]:
            out.append("  spec columns missing (share of the rows that parse as objects; a "
                       "feature's default is used): "
                       + ", ".join(f"{c} {rate:.1%}" + (" (absent)" if rate == 1 else "")
                                   for c, rate in r["missing_columns"].items()))
        if r["unread_columns"]:
            out.append(f"  log columns the spec does not read: {', '.join(r['unread_columns'])}")
    out += [f"note: {n}" for n in logs["notes"]]
    out.append(f"{bad} of {total} sampled rows would be quarantined")
    return "\n".join(out)


# ---------------------------------------------------------------- spec diff

_FIELD_NAMES = {"vocab_min_count": "vocab.min_count", "vocab_max_size": "vocab.max_size"}
_REBUILD_RULE = ("built days are not rebuilt for a spec change: `build --skip_built` and the "
                 "daily build skip every day whose stats file exists, and the spec_fingerprint "
                 "the stats record is not compared; only `ecdctr build` without --skip_built, "
                 "over the days to redo, rebuilds them")
_SNAPSHOT_RULE = ("a CPM reads the newest transfer.tpm_snapshots TPM snapshots chosen by "
                  "training window (snapshots.choose_snapshots). Each snapshot's tables are keyed "
                  "by the name of its entity features; the CPM and the A-CTR look them up by "
                  "that name in the current spec's inputs, and every snapshot read together "
                  "must have the same entity features with the same dim (TpmAggregator). "
                  "Snapshots that break this with the current spec are left out, with a log "
                  "line (snapshots.readable_snapshots): the models train with fewer snapshots, or "
                  "none, until newer ones arrive")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _changes(old: Feature, new: Feature) -> dict[str, list]:
    a, b = dataclasses.asdict(old), dataclasses.asdict(new)
    return {_FIELD_NAMES.get(k, k): [_plain(a[k]), _plain(b[k])]
            for k in a if k != "name" and a[k] != b[k]}


def _layout(features: Sequence[Feature]) -> list[tuple[str, int]]:
    """(feature, width) in the order FeatureEncoder concatenates them: the dense input of
    the first MLP layer (and DCN cross layers) before the TPM vectors."""
    return [(f.name, f.dim if f.embedded else 1) for f in features]


def _input_change(old: Sequence[Feature], new: Sequence[Feature]) -> str | None:
    a, b = _layout(old), _layout(new)
    if a == b:
        return None
    wa, wb = sum(w for _, w in a), sum(w for _, w in b)
    if wa != wb:
        return (f"the feature vector changes width ({wa} -> {wb}): the first MLP layer (and "
                f"cross layers) change shape and start fresh in the warm start")
    return ("the feature vector keeps its width but features sit at other positions: the "
            "first MLP layer's weights are copied by shape and no longer line up with their "
            "inputs")


def _tpm_verdict(old: Spec, new: Spec, fresh: list[str]) -> dict:
    new_by_name = {f.name: f for f in new.features}
    old_tables = {f.name: f.dim for f in old.entities.values()}
    new_tables = {f.name: f.dim for f in new.entities.values()}
    blockers, later, warnings = [], [], []
    for f in old.entities.values():
        g = new_by_name.get(f.name)
        if g is None:
            blockers.append(f"existing snapshots hold a table keyed by {f.name!r}, which the new "
                            f"spec has no feature for: a CPM or A-CTR leaves them out "
                            f"(logged) and trains without them")
        elif g.kind != "categorical":
            blockers.append(f"existing snapshots look up {f.name!r} as one id per row; the new "
                            f"spec makes it {g.kind}: a CPM or A-CTR leaves them out (logged)")
        elif g.column != f.column:
            warnings.append(f"{f.name!r} now reads column {g.column!r} (was {f.column!r}): the "
                            f"existing snapshots' vectors are looked up with another column's "
                            f"values; nothing fails")
    if old_tables != new_tables:
        later.append(f"the next TPM snapshot will hold tables {new_tables}, the existing ones "
                     f"{old_tables}: once the TPM retrains, a CPM reads the new snapshot and leaves "
                     f"the old ones out (entity features or dims differ; logged) until they "
                     f"leave the newest transfer.tpm_snapshots")
    for name in sorted(set(old_tables) & set(new_tables) & set(fresh)):
        if old_tables[name] == new_tables[name]:
            warnings.append(f"entity feature {name!r} changed fingerprint: the next TPM starts "
                            f"its embedding fresh in its warm start, so its snapshot is not in "
                            f"the embedding space of the existing ones (the CPM's attention "
                            f"mixes them)")
    if blockers:
        verdict = "not usable"
    elif later:
        verdict = "usable until the TPM retrains, then not with the new snapshots"
    else:
        verdict = "usable, with warnings" if warnings else "usable"
    return {"usable": not (blockers or later), "until_tpm_retrains": not blockers,
            "verdict": verdict, "blockers": blockers + later, "warnings": warnings,
            "rule": _SNAPSHOT_RULE}


def _build_impact(old: Spec, new: Spec) -> dict:
    reasons = []
    for key in ("label", "timestamp", "request_id"):
        if getattr(old, key) != getattr(new, key):
            reasons.append(f"{key} column {getattr(old, key)!r} -> {getattr(new, key)!r}: built "
                           f"examples, quarantine and stats use the old one")
    added = [c for c in new.columns if c not in old.columns]
    if added:
        reasons.append(f"new column(s) {', '.join(added)}: built examples keep only the columns "
                       f"their spec read, so in built days every row gets the default")
    old_kind, new_kind = {}, {}
    for spec, kinds in ((old, old_kind), (new, new_kind)):
        for f in spec.features:
            kinds.setdefault(f.column, f.kind)  # as RowParser types a column
    for column, kind in new_kind.items():
        if column in old_kind and old_kind[column] != kind:
            reasons.append(f"column {column!r} is built as {old_kind[column]}, now read as "
                           f"{kind}: built examples encode the old type")
    old_vocab = {f.name for f in old.features if f.uses_vocab}
    counted = [f.name for f in new.features if f.uses_vocab and f.name not in old_vocab]
    if counted:
        reasons.append(f"vocabulary feature(s) {', '.join(counted)} have no token counts in "
                       f"built days (counts/<day>/<feature>.tsv): their vocabularies are empty, "
                       f"every id is out-of-vocabulary")
    domain = [(f.column, f.default) for f in old.domain_features]
    if domain != [(f.column, f.default) for f in new.domain_features]:
        reasons.append("the domain features changed: built days' stats count rows per domain "
                       "of the old ones (the domain list of multi-domain models)")
    return {"rebuild": bool(reasons), "reasons": reasons, "rule": _REBUILD_RULE}


def _retrain(old: Spec, new: Spec, warm: dict, fresh: list[str], tpm: dict) -> dict:
    old_tpm = [f.name for f in old.tpm_features]
    new_tpm = [f.name for f in new.tpm_features]
    tpm_fresh = [n for n in new_tpm if n in fresh]
    if old_tpm == new_tpm and not tpm_fresh:
        tpm_line = "unaffected: the same TPM features with the same fingerprints"
    else:
        parts = [f"{what} {', '.join(names)}" for what, names in (
            ("added", [n for n in new_tpm if n not in old_tpm]),
            ("removed", [n for n in old_tpm if n not in new_tpm]),
            ("start fresh", tpm_fresh)) if names]
        tpm_line = (f"the TPM model changes ({'; '.join(parts)}): it retrains at its next "
                    f"scheduled period (schedule.tpm; a spec change does not make it due), "
                    f"warm-starting from the previous snapshot")
        change = _input_change(old.tpm_features, new.tpm_features)
        if change:
            tpm_line += f"; {change}"
    cpm_line = ("retrains at its next scheduled period (schedule.cpm; a spec change does not "
                "make it due), warm-starting from the previous CPM: "
                + (f"fresh {', '.join(fresh)}" if fresh else "nothing fresh")
                + (f", dropped {', '.join(warm['removed'])}" if warm["removed"] else "")
                + ", the rest restored")
    change = _input_change(old.features, new.features)
    if change:
        cpm_line += f"; {change}"
    actr_line = ("the next daily run updates yesterday's A-CTR on the new ad days when it "
                 "descends from the newest CPM (a spec change does not re-derive it), with "
                 + (f"{', '.join(fresh)} fresh" if fresh else "nothing fresh")
                 + "; it is re-derived from the CPM when a new CPM lands")
    old_numeric = {f.column for f in old.features if f.kind == "numeric"}
    zscore = sorted({f.column for f in new.features
                     if f.normalize == "zscore" and f.column not in old_numeric})
    if zscore:
        actr_line += (f"; the z-score column(s) {', '.join(zscore)} take their mean and std "
                      f"from the A-CTR's ad days until a CPM trained with the new spec lands")
    if not tpm["until_tpm_retrains"]:
        cpm_line += ("; the existing TPM snapshots are left out (see TPM snapshots): the CPM "
                     "and A-CTR train without TPM until the TPM retrains")
    elif not tpm["usable"]:
        cpm_line += ("; once the TPM retrains, the existing snapshots are left out next to "
                     "the new one (see TPM snapshots)")
    return {"tpm": tpm_line, "cpm": cpm_line, "actr": actr_line}


def diff(old_path: str, new_path: str) -> tuple[dict, int]:
    """(report, exit status) of `ecdctr spec diff`: 0 when both specs have the same
    fingerprint (identical in effect), 1 when they differ. Both are validated first (one
    ConfigError naming every problem of the first invalid one)."""
    old, new = load_spec(old_path), load_spec(new_path)
    warm = feature_diff(feature_fingerprints(old), feature_fingerprints(new))
    fresh = warm["new"] + warm["changed"]  # as the daily job's warm starts take them
    old_by_name = {f.name: f for f in old.features}
    new_names = {f.name for f in new.features}
    features = []
    for f in new.features:
        before = old_by_name.get(f.name)
        changes = _changes(before, f) if before else {}
        features.append({"name": f.name, "status": "added" if before is None else
                         "changed" if changes else "unchanged",
                         "fingerprint": [before.fingerprint if before else None, f.fingerprint],
                         "fingerprint_changes": before is None or before.fingerprint != f.fingerprint,
                         "changes": changes})
    features += [{"name": f.name, "status": "removed", "fingerprint": [f.fingerprint, None],
                  "fingerprint_changes": True, "changes": {}}
                 for f in old.features if f.name not in new_names]
    top = {k: [getattr(old, k), getattr(new, k)]
           for k in ("label", "timestamp", "request_id", "group_by")
           if getattr(old, k) != getattr(new, k)}
    common = [f.name for f in old.features if f.name in new_names]
    order_changed = common != [f.name for f in new.features if f.name in old_by_name]
    tpm = _tpm_verdict(old, new, fresh)
    identical = old.fingerprint == new.fingerprint
    report = {
        "old": {"path": old.path, "fingerprint": old.fingerprint},
        "new": {"path": new.path, "fingerprint": new.fingerprint},
        "identical": identical, "top_level": top, "order_changed": order_changed,
        "features": features,
        "warm_start": {**warm, "fresh": fresh},
        "tpm_snapshots": tpm,
        "retrain": _retrain(old, new, warm, fresh, tpm),
        "build": _build_impact(old, new),
    }
    return report, 0 if identical else 1


def format_diff(report: dict) -> str:
    """The text `ecdctr spec diff` prints."""
    old, new = report["old"], report["new"]
    out = [f"old {old['path']} (fingerprint {old['fingerprint']})",
           f"new {new['path']} (fingerprint {new['fingerprint']})"]
    if report["identical"]:
        out.append("identical in effect: same fingerprint; nothing starts fresh, nothing retrains "
                   "early, built days and TPM snapshots stay as they are")
        return "\n".join(out)
    for key, (a, b) in report["top_level"].items():
        out.append(f"{key}: {a} -> {b}")
    if report["order_changed"]:
        out.append("feature order changed")
    out.append("features:")
    for f in report["features"]:
        fp = f["fingerprint"]
        if f["status"] == "changed":
            what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in f["changes"].items())
            out.append(f"  changed    {f['name']}: {what}; fingerprint {fp[0]} -> {fp[1]}")
        elif f["status"] == "added":
            out.append(f"  added      {f['name']} (fingerprint {fp[1]})")
        elif f["status"] == "removed":
            out.append(f"  removed    {f['name']} (fingerprint {fp[0]})")
        else:
            out.append(f"  unchanged  {f['name']} (fingerprint {fp[1]} kept)")
    w = report["warm_start"]
    out.append("start fresh at the next CPM warm start (new + changed, as daily's "
               f"feature_diff decides): {', '.join(w['fresh']) or 'none'}; restored: "
               f"{len(w['restored'])}; dropped: {', '.join(w['removed']) or 'none'}")
    t = report["tpm_snapshots"]
    out.append(f"existing TPM snapshots: {t['verdict']}")
    out += [f"  - {b}" for b in t["blockers"]] + [f"  - warning: {x}" for x in t["warnings"]]
    r = report["retrain"]
    out += ["what retrains:", f"  TPM: {r['tpm']}", f"  CPM: {r['cpm']}", f"  A-CTR: {r['actr']}"]
    b = report["build"]
    out.append("built days: " + ("rebuild the days the models read (`ecdctr build` without "
                                 "--skip_built):" if b["rebuild"] else
                                 "no rebuild needed (vocabularies, hashing, dims, defaults and "
                                 "normalisation apply at training time)"))
    out += [f"  - {x}" for x in b["reasons"]]
    out.append(f"  ({b['rule']})")
    return "\n".join(out)


def as_json(report: dict) -> str:
    """A report as indented JSON (--json)."""
    return json.dumps(report, indent=2, default=str)
