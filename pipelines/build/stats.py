"""A built day's statistics, gathered row by row: one accumulator for a day and for each slice
of it, its slices merged into the day's, the token counts written as vocabulary counts."""

from __future__ import annotations

import collections
import datetime as dt
import json
import math
from typing import Any

from ecdctr.data.readers import jsonable
from ecdctr.data.rows import ParsedRow
from ecdctr.io import beam_files, layout
from ecdctr.spec.feature_spec import Spec

COUNT_EVERY = 1 << 16  # rows whose tokens are gathered before one Counter.update per feature
_NO_VALUES = (0, 0.0, 0.0, math.inf, -math.inf)  # count, sum, sum of squares, min, max
_NOT_SAVED = ("counts", "domain_columns", "_gathered", "_rows_gathered")  # DayStats.write


def numeric_columns(spec: Spec) -> list[str]:
    """The spec's numeric columns, each once, in spec order."""
    columns: list[str] = []
    for f in spec.features:
        if f.kind == "numeric" and f.column not in columns:
            columns.append(f.column)
    return columns


class DayStats:
    """What building a day, or one slice of it, counted: its files, rows read, written and
    quarantined (by reason), clicks, rows and clicks per domain, sums of numeric columns,
    dropped columns, the token counts of vocabulary features and the size and crc32c of each
    shard file written (`shard_files`, ecdctr.io.digest). The slices of a day merge
    (`merged`) into what one pass over it counts."""

    def __init__(self, spec: Spec, shards: int):
        self.files: list[str] = []
        self.empty_files: list[str] = []
        self.shards, self.slices = shards, 1
        self.rows_read = self.blank_lines = self.rows_written = self.clicks = 0
        self.quarantine_reasons: collections.Counter = collections.Counter()
        self.dropped_columns: collections.Counter = collections.Counter()
        self.domains: dict[str, list[int]] = {}
        self.numeric = {c: list(_NO_VALUES) for c in numeric_columns(spec)}
        self.domain_columns = [(f.column, f.default) for f in spec.domain_features]
        vocab = [f for f in spec.features if f.uses_vocab]
        self.counts = {f.name: collections.Counter() for f in vocab}
        self.tokens_with_line_breaks = 0
        self.shard_files: dict[str, dict] = {}
        # tokens gathered per vocabulary feature since the last count_tokens
        self._gathered: list[tuple[str, collections.Counter, list]] = [
            (f.column, self.counts[f.name], []) for f in vocab]
        self._rows_gathered = 0

    def file_read(self, path: str, rows: int, blank_lines: int, empty: bool) -> None:
        """Counts one log file read: `rows` of its rows were this slice's."""
        self.count_tokens()
        self.files.append(path)
        self.rows_read += rows
        self.blank_lines += blank_lines
        if empty:
            self.empty_files.append(path)

    def quarantined(self, reason: str) -> None:
        """Counts one row quarantined for `reason`."""
        self.quarantine_reasons[reason] += 1

    def add(self, row: ParsedRow) -> None:
        """Counts one row written."""
        label, values = row.label, row.values
        self.rows_written += 1
        self.clicks += label
        domain = "|".join([str(values.get(c, default))
                           for c, default in self.domain_columns]) or "all"
        d = self.domains.get(domain)
        if d is None:
            self.domains[domain] = [1, label]
        else:
            d[0] += 1
            d[1] += label
        for column, acc in self.numeric.items():
            x = values.get(column)
            if x is not None:
                acc[0] += 1
                acc[1] += x
                acc[2] += x * x
                if x < acc[3]:
                    acc[3] = x
                if x > acc[4]:
                    acc[4] = x
        for column, _, tokens in self._gathered:
            value = values.get(column)
            if value is not None:
                if value.__class__ is str:
                    tokens.append(value)
                else:
                    tokens.extend(value)
        if row.dropped_columns:
            self.dropped_columns.update(row.dropped_columns)
        self._rows_gathered += 1
        if self._rows_gathered == COUNT_EVERY:  # bounded memory: count the gathered tokens
            self.count_tokens()

    def count_tokens(self) -> None:
        """Counts the tokens gathered so far (called before the counts are read)."""
        for _, counter, tokens in self._gathered:
            counter.update(tokens)
            tokens.clear()
        self._rows_gathered = 0

    @classmethod
    def merged(cls, spec: Spec, slices: list[DayStats]) -> DayStats:
        """A day's stats from its slices' (in slice order): counts added, min and max taken,
        float sums added in slice order (equal to one pass's within rounding). Files, empty
        files and blank lines: slice 0's (every slice reads every file)."""
        day = cls(spec, slices[0].shards)
        day.files, day.empty_files = slices[0].files, slices[0].empty_files
        day.blank_lines, day.slices = slices[0].blank_lines, len(slices)
        for part in slices:
            part.count_tokens()
            day.rows_read += part.rows_read
            day.rows_written += part.rows_written
            day.clicks += part.clicks
            day.quarantine_reasons.update(part.quarantine_reasons)
            day.dropped_columns.update(part.dropped_columns)
            for key, (rows, clicks) in part.domains.items():
                d = day.domains.setdefault(key, [0, 0])
                d[0] += rows
                d[1] += clicks
            for column, (count, total, total_sq, low, high) in part.numeric.items():
                acc = day.numeric[column]
                acc[0] += count
                acc[1] += total
                acc[2] += total_sq
                acc[3] = min(acc[3], low)
                acc[4] = max(acc[4], high)
            for name, counter in part.counts.items():
                day.counts[name].update(counter)
            day.shard_files.update(part.shard_files)
        return day

    def write(self, staging: str, source: str, date: str) -> None:
        """The day's token counts and its stats (which `read` reads back) into staging."""
        self.write_counts(staging, source, date)
        fields = {k: v for k, v in vars(self).items() if k not in _NOT_SAVED}
        fields["numeric"] = {c: acc if acc[0] else [0, 0.0, 0.0, None, None]
                             for c, acc in self.numeric.items()}
        beam_files.write_bytes(layout.stats_file(staging, source, date),
                               json.dumps(jsonable(fields), sort_keys=True).encode("utf-8"))

    def write_counts(self, staging: str, source: str, date: str) -> None:
        """Token counts of each vocabulary feature -> `token<TAB>count` lines, count desc then
        token (a token with a line break cannot be a vocabulary line: it is left out)."""
        self.count_tokens()
        for name, counts in self.counts.items():
            if not counts:
                continue
            ranked = sorted(((t, n) for t, n in counts.items() if "\n" not in t and "\r" not in t),
                            key=lambda kv: (-kv[1], kv[0]))
            beam_files.write_bytes(layout.counts_file(staging, source, date, name),
                                   "".join(f"{t}\t{n}\n" for t, n in ranked).encode("utf-8"))
            self.tokens_with_line_breaks += len(counts) - len(ranked)

    @classmethod
    def read(cls, spec: Spec, staging: str, source: str, date: str) -> DayStats:
        """The stats `write` put into staging (without the token counts, which are files)."""
        fields = json.loads(beam_files.read_bytes(layout.stats_file(staging, source, date)))
        day = cls(spec, fields["shards"])
        numeric = fields.pop("numeric")
        for key, value in fields.items():
            setattr(day, key, value)
        day.quarantine_reasons = collections.Counter(fields["quarantine_reasons"])
        day.dropped_columns = collections.Counter(fields["dropped_columns"])
        for column, acc in day.numeric.items():  # in spec order
            if numeric[column][0]:
                acc[:] = numeric[column]
        return day

    def report(self, spec: Spec, source: str, date: str, seconds: float) -> dict[str, Any]:
        """The day's stats as its stats file holds them."""
        numeric = {column: {"count": count, "sum": total, "sumsq": total_sq,
                            "min": low if count else None, "max": high if count else None}
                   for column, (count, total, total_sq, low, high) in self.numeric.items()}
        stats = {
            "source": source, "date": date,
            "files": sorted(self.files),
            "empty_files": sorted(self.empty_files),
            "rows_read": self.rows_read,
            "rows_written": self.rows_written,
            "rows_quarantined": sum(self.quarantine_reasons.values()),
            "quarantine_reasons": dict(sorted(self.quarantine_reasons.items())),
            "dropped_columns": dict(sorted(self.dropped_columns.items())),
            "blank_lines": self.blank_lines,
            "clicks": self.clicks,
            "ctr": self.clicks / self.rows_written if self.rows_written else 0.0,
            "domains": {k: {"rows": v[0], "clicks": v[1]} for k, v in sorted(self.domains.items())},
            "numeric": numeric,
            "shards": self.shards,
            "shard_files": dict(sorted(self.shard_files.items())),
            "spec_fingerprint": spec.fingerprint,
            "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "seconds": round(seconds, 3),
        }
        if self.slices > 1:
            stats["slices"] = self.slices
        if self.tokens_with_line_breaks:
            stats["tokens_with_line_breaks"] = self.tokens_with_line_breaks
        return stats

