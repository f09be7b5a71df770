"""Peak memory of the Beam build (`pipelines.build.build`) against the rows and days it builds.

    python benchmarks/build_memory.py [--sizes 10x6000,40x6000,160x6000,40x24000] [--repeats 1]
                                      [--beam_args ...] [--out benchmarks/results_memory.json]
                                      [--slices 1,4]

Each size DAYSxN is DAYS simulated days of N natural rows a day plus 10% ad rows
(`SimConfig(natural_rows_per_day=N, ad_ratio=0.1)`, made once under
benchmarks/.data/memory/), built from an empty work folder by a fresh child process, as
`ecdctr daily` does on its first run (one build over every day). The peak is the child's
ru_maxrss from wait4 (its own and that of any process it waited for, e.g. Beam worker
processes: the largest single one, not their sum). A child that only imports what the
build's driver imports (TensorFlow included) gives the baseline that every such process
pays; `build_mb` is the peak above it. The figures are in MB (1 MB = 2**20 bytes).
`cpu_seconds` is the child's user + system CPU time (with the processes it waited for).

--slices S1,S2,...: each size is built once per S, repeats interleaved; S = 1 is the
build's default slice_bytes, S > 1 sets slice_bytes to ceil(largest day's weighted input
bytes / S), so the largest day is built in S slices by request-id hash (see
pipelines.build.discovery.slice_count) and smaller days in fewer or one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / ".data" / "memory"
SPEC = ROOT / "features" / "default.yaml"
START = dt.date(2024, 1, 1)
DEFAULT_SIZES = "10x6000,40x6000,160x6000,40x24000"


def child(logs: str, work: str, slice_bytes: int, beam_args: list[str]) -> None:
    """What a measured child process runs: imports only (logs == '-') or one build."""
    import ecdctr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
    from ecdctr.spec.feature_spec import load_spec
    from pipelines.build import SLICE_BYTES, build

    if logs == "-":  # the baseline: the build's imports and TensorFlow, which its driver
        import tensorflow  # noqa: F401  loads at its first ecdctr.io.storage call
        return
    shutil.rmtree(work, ignore_errors=True)
    results = build(load_spec(str(SPEC)), logs, work, beam_args=beam_args,
                    slice_bytes=slice_bytes or SLICE_BYTES)
    print(json.dumps({"rows": sum(s["rows_read"] for s in results), "days": len(results),
                      "slices": max(s.get("slices", 1) for s in results)}))


def measure(logs: str, work: str, beam_args: list[str], slice_bytes: int = 0) -> dict:
    """Peak RSS (MB), wall and CPU seconds and the child's output of one child process."""
    began = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", logs, work, str(slice_bytes), "--",
                             *beam_args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"the child building {logs} failed with status {proc.returncode}")
    result = json.loads(out) if out.strip() else {}
    return {"peak_mb": round(usage.ru_maxrss / 1024), "seconds": round(time.perf_counter() - began, 1),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1), **result}


def _weighted_bytes(folder: Path) -> int:
    """A day's input bytes as the build weighs them (discovery.input_bytes)."""
    from pipelines.build.discovery import input_bytes

    return sum(input_bytes(str(f), f.stat().st_size) for f in folder.iterdir() if f.is_file())


def logs_for(days: int, per_day: int) -> str:
    from ecdctr.data.simulator import SimConfig, simulate

    logs = DATA / f"logs-{days}x{per_day}"
    if not (logs / "summary.json").exists():
        shutil.rmtree(logs, ignore_errors=True)
        summary = simulate(str(logs), START, days, SimConfig(natural_rows_per_day=per_day,
                                                             ad_ratio=0.1))
        (logs / "summary.json").write_text(json.dumps(summary))
    return str(logs)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[6:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="DAYSxROWS_PER_DAY,...")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--beam_args", default="", help="Beam options, space-separated")
    parser.add_argument("--slices", default="1", help="S1,S2,...: slices of the largest day")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results_memory.json"))
    args = parser.parse_args()
    beam_args = args.beam_args.split()
    DATA.mkdir(parents=True, exist_ok=True)
    work = str(DATA / "work")
    imports = [measure("-", work, []) for _ in range(args.repeats)]
    baseline = min(r["peak_mb"] for r in imports)
    rows = []
    slice_counts = [int(x) for x in args.slices.split(",")]
    for size in args.sizes.split(","):
        days, per_day = (int(x) for x in size.split("x"))
        logs = logs_for(days, per_day)
        largest = max(_weighted_bytes(day) for day in Path(logs).glob("*/date=*"))
        runs: dict[int, list[dict]] = {s: [] for s in slice_counts}
        for _ in range(args.repeats):  # interleaved, so that the machine's load hits all alike
            for s in slice_counts:
                runs[s].append(measure(logs, work, beam_args, -(-largest // s) if s > 1 else 0))
        for s in slice_counts:
            peak = max(r["peak_mb"] for r in runs[s])
            row = {"size": size, "days": days, "natural_rows_per_day": per_day,
                   "rows": runs[s][0]["rows"], "partitions": runs[s][0]["days"],
                   "slices": runs[s][0]["slices"], "peak_mb": peak, "build_mb": peak - baseline,
                   "seconds": [r["seconds"] for r in runs[s]],
                   "cpu_seconds": [r["cpu_seconds"] for r in runs[s]]}
            rows.append(row)
            print(f"{size}, {row['slices']} slice(s): {row['rows']:,} rows in "
                  f"{row['partitions']} partitions, peak {peak:,} MB ({row['build_mb']:,} MB "
                  f"above the imports), {row['seconds']} s, CPU {row['cpu_seconds']} s",
                  flush=True)
    shutil.rmtree(work, ignore_errors=True)
    result = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
              "loadavg": round(os.getloadavg()[0], 2), "beam_args": beam_args,
              "baseline_mb": baseline,
              "baseline_cpu_seconds": sorted(r["cpu_seconds"] for r in imports)[len(imports) // 2],
              "sizes": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"imports alone: {baseline:,} MB; results in {args.out}")


if __name__ == "__main__":
    main()
