"""Bounded line reading (BENCHMARKS §18): the raw-log reader (readers.read_log_file, lines
bounded by max_line_bytes) against a plain `for line in gzip_file` loop, the way the reader
read before, on two gzip files: blank lines only, and one line of zero bytes with no newline.
Each measurement runs in a child process of its own, for its peak RSS, and is timed after
the imports; medians of 3.

    python benchmarks/bounded_lines.py [--blank_lines 4194304] [--zero_bytes 268435456]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = """
import gzip, json, resource, sys, time
how, path = sys.argv[1], sys.argv[2]
from ecdctr.data.readers import FileCounters, read_log_file  # both arms: the same imports
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
started = time.perf_counter()
if how == "bounded":
    rows = sum(1 for _ in read_log_file(path, FileCounters()))
else:
    rows = 0
    with gzip.open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                rows += 1
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "rows": rows, "before_mb": before,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _write(path: str, byte: bytes, count: int) -> None:
    chunk = byte * (1 << 22)
    with gzip.open(path, "wb", compresslevel=9) as f:
        for _ in range(count >> 22):
            f.write(chunk)


def _measure(how: str, path: str) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", CHILD, how, path], capture_output=True,
                          text=True, check=True, cwd=root, env={**os.environ, "PYTHONPATH": root})
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blank_lines", type=int, default=4 << 20)
    parser.add_argument("--zero_bytes", type=int, default=256 << 20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        files = {"blank lines": (os.path.join(folder, "blank.jsonl.gz"), b"\n", args.blank_lines),
                 "one zero line": (os.path.join(folder, "zero.jsonl.gz"), b"\0", args.zero_bytes)}
        for name, (path, byte, count) in files.items():
            _write(path, byte, count)
            for how in ("plain", "bounded"):
                runs = [_measure(how, path) for _ in range(args.repeats)]
                each = ", ".join(f"{r['seconds']:.2f}" for r in runs)
                print(f"{name} ({count:,} bytes, {os.path.getsize(path):,} gzipped), {how}: "
                      f"{statistics.median(r['seconds'] for r in runs):.2f} s ({each}), "
                      f"peak RSS {statistics.median(r['peak_mb'] for r in runs):.0f} MB "
                      f"(after imports {statistics.median(r['before_mb'] for r in runs):.0f} MB), "
                      f"rows {runs[0]['rows']}", flush=True)


if __name__ == "__main__":
    main()
