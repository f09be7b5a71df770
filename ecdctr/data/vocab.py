"""Vocabularies and normalisation statistics, merged from the Beam job's per-day outputs."""

from __future__ import annotations

import collections
import datetime as dt
import json
import math
from collections.abc import Iterable

from ecdctr.io import layout, storage
from ecdctr.spec.feature_spec import Spec

Partition = tuple[str, dt.date]  # (source, date)
OOV_PLACEHOLDER = "<no-vocabulary>"  # keeps lookups valid when a window has no tokens
OOV_TOKEN = "[UNK]"  # tf_keras StringLookup's OOV token: it drops it from the head of a
# vocabulary, which would shift every row by one, so an id spelled "[UNK]" is left out (OOV).
# The empty id (a "" inside a list; a blank single value is missing) is left out too: an export
# ships each vocabulary as a text file, one token per line, where it cannot be a line.


def read_stats(work: str, source: str, date: dt.date) -> dict:
    """One built day's statistics."""
    return json.loads(storage.read_text(layout.stats_file(work, source, date)))


def traffic(work: str, partitions: Iterable[Partition]) -> tuple[int, float]:
    """(rows written, CTR) over built partitions, from their stats."""
    stats = [read_stats(work, source, date) for source, date in partitions]
    rows = sum(s["rows_written"] for s in stats)
    return rows, sum(s["clicks"] for s in stats) / max(rows, 1)


def merge_counts(work: str, feature: str, partitions: Iterable[Partition]) -> collections.Counter:
    """Sums one feature's token counts over partitions."""
    total: collections.Counter = collections.Counter()
    for source, date in partitions:
        path = layout.counts_file(work, source, date, feature)
        if not storage.exists(path):
            continue
        with storage.open(path) as f:
            for line in f:
                token, _, count = line.rstrip("\n").rpartition("\t")
                total[token] += int(count)
    return total


def build_vocabularies(spec: Spec, work: str, partitions: Iterable[Partition]) -> dict[str, list[str]]:
    """Vocabulary per vocabulary feature: tokens with count >= min_count, the max_size most
    frequent, ordered by count then token (stable across runs); never "[UNK]" nor ""."""
    partitions = list(partitions)
    vocabs = {}
    for feature in spec.features:
        if not feature.uses_vocab:
            continue
        counts = merge_counts(work, feature.name, partitions)
        ranked = sorted((t for t, c in counts.items()
                         if c >= feature.vocab_min_count and t != OOV_TOKEN and t),
                        key=lambda t: (-counts[t], t))
        vocabs[feature.name] = ranked[: feature.vocab_max_size] or [OOV_PLACEHOLDER]
    return vocabs


def numeric_stats(spec: Spec, work: str, partitions: Iterable[Partition]) -> dict[str, tuple[float, float]]:
    """(mean, std) per numeric column over the partitions, for z-score normalisation."""
    sums: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0.0])
    for source, date in partitions:
        for column, s in read_stats(work, source, date).get("numeric", {}).items():
            acc = sums[column]
            acc[0] += s["count"]
            acc[1] += s["sum"]
            acc[2] += s["sumsq"]
    out = {}
    for f in spec.features:
        n, total, total_sq = sums.get(f.column, (0.0, 0.0, 0.0))
        if f.kind != "numeric" or f.column in out:
            continue
        mean = total / n if n else 0.0
        var = max(total_sq / n - mean * mean, 0.0) if n else 1.0
        out[f.column] = (mean, math.sqrt(var) or 1.0)
    return out


def write_vocabularies(vocabs: dict[str, list[str]], folder: str) -> None:
    """Writes <folder>/<feature>.txt, one token per line, each file atomically."""
    storage.makedirs(folder)
    for name, tokens in vocabs.items():
        storage.write_text(storage.join(folder, f"{name}.txt"), "".join(t + "\n" for t in tokens))


def read_vocabularies(folder: str) -> dict[str, list[str]]:
    """Reads what write_vocabularies wrote. Lines end at "\n" only (the build leaves tokens
    with "\n" or "\r" out): str.splitlines would also cut tokens at \x0b, \x0c, \x1c-\x1e,
    \x85, \u2028 and \u2029, which ids may hold."""
    return {name[:-4]: storage.read_text(storage.join(folder, name)).split("\n")[:-1]
            for name in storage.listdir(folder) if name.endswith(".txt")}


def domain_sizes(work: str, partitions: Iterable[Partition]) -> dict[str, int]:
    """Rows per domain key (the domain-aware features' values joined by '|') over partitions,
    largest first; the domain list the multi-domain models index."""
    rows: collections.Counter = collections.Counter()
    for source, date in partitions:
        for key, d in read_stats(work, source, date).get("domains", {}).items():
            rows[key] += d["rows"]
    return dict(sorted(rows.items(), key=lambda kv: (-kv[1], kv[0])))
