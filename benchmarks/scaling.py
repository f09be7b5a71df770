"""Scaling of the build and of training, measured on this machine and modelled for production.

    python benchmarks/scaling.py build [--sizes 4x6000,16x6000,4x24000] [--workers 1,2,4]
                                       [--repeats 3]
    python benchmarks/scaling.py train [--repeats 3] [--natural_rows 2000]
    python benchmarks/scaling.py model

`build`: each size DAYSxN is DAYS simulated days of N natural rows plus 10% ad rows
(`SimConfig(natural_rows_per_day=N, ad_ratio=0.1)`, 2·DAYS partitions, made once under
benchmarks/.data/scaling/), built from local disk into a fresh local work folder by
`pipelines.build.build` called in this process, as benchmarks/run.py does, on:
  - `direct`: the in-process DirectRunner (FnApiRunner), one worker;
  - `direct_mp`: the DirectRunner with --direct_running_mode=multi_processing and
    --direct_num_workers=W (W new worker processes per build);
  - `dask`: the DaskRunner on a dask.distributed LocalCluster of W single-thread worker
    processes on 127.0.0.1, started before the timed builds (a long-lived cluster).
Wall seconds are the whole build() call; CPU seconds are user + system of this process (the
driver, and the Dask scheduler, which runs in it) plus the processes it waited for (the
DirectRunner's workers) plus the Dask workers' own (psutil, before and after). Peak worker
MB: the largest RSS of any one worker process (the Dask workers, or the processes the
DirectRunner starts; none in process), sampled every 50 ms. Within each worker count
the arms take turns, the first arm rotating each repeat; figures are medians of the repeats.

`train`: `ecdctr daily` on a simulated world (9 days; the 9th is D) in one process
(`distribute.strategy: none`), with multi_worker_mirrored on 2 worker processes, and with
parameter_server (a chief, 2 workers, 1 ps), every task on 127.0.0.1 (TF_CONFIG), fixed
epochs; examples/s of each fit come from the report (`train.examples_per_second`).

`model`: the worker count and wall time of a production day, and the parameter servers an
embedding table needs, from the measured figures and the assumptions printed with them.
Results: benchmarks/results_scaling.json (each subcommand rewrites its own entry).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT / "benchmarks" / ".data" / "scaling"
RESULTS = ROOT / "benchmarks" / "results_scaling.json"
SPEC = ROOT / "features" / "default.yaml"
START = dt.date(2024, 1, 1)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load() -> float:
    return round(os.getloadavg()[0], 2)


def median(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def logs_for(days: int, per_day: int) -> tuple[str, int]:
    """Simulated logs of DAYS days (made once); returns (folder, rows)."""
    from ecdctr.data.simulator import SimConfig, simulate

    logs = DATA / f"logs-{days}x{per_day}"
    marker = logs / "summary.json"
    if not marker.exists():
        shutil.rmtree(logs, ignore_errors=True)
        say(f"simulating {days} days of {per_day:,} natural rows into {logs}")
        summary = simulate(str(logs), START, days, SimConfig(natural_rows_per_day=per_day,
                                                             ad_ratio=0.1))
        marker.write_text(json.dumps(summary))
    summary = json.loads(marker.read_text())
    return str(logs), summary["natural"]["rows"] + summary["ad"]["rows"]


def own_cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def cpu_of(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


@contextlib.contextmanager
def peak_rss(processes: Callable[[], list[psutil.Process]]) -> Iterator[list[float]]:
    """Samples the RSS of each of processes() every 50 ms; yields a list whose one element is
    then the largest single RSS seen (MB)."""
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            for process in processes():
                with contextlib.suppress(psutil.Error):
                    peak[0] = max(peak[0], process.memory_info().rss / 2**20)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        done.set()
        thread.join()


class DaskWorkers:
    """A LocalCluster of `n` single-thread worker processes on 127.0.0.1."""

    def __init__(self, n: int):
        from distributed import Client, LocalCluster

        began = time.perf_counter()
        self.cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                    host="127.0.0.1", dashboard_address=None)
        with Client(self.cluster.scheduler_address) as client:
            client.wait_for_workers(n)
            pids = client.run(os.getpid)
        self.start_seconds = round(time.perf_counter() - began, 2)
        self.processes = [psutil.Process(pid) for pid in pids.values()]
        self.idle_mb = round(max(p.memory_info().rss for p in self.processes) / 2**20)

    def beam_args(self) -> list[str]:
        return ["--runner=DaskRunner", f"--dask_client_address={self.cluster.scheduler_address}"]

    def close(self) -> None:
        self.cluster.close()


def one_build(spec, logs: str, beam_args: list[str], dask: DaskWorkers | None) -> dict:
    """One timed build into a fresh work folder."""
    from pipelines.build import build

    work = DATA / "work"
    shutil.rmtree(work, ignore_errors=True)
    before = {c.pid for c in psutil.Process().children(recursive=True)}  # a LocalCluster's
    workers = (lambda: dask.processes) if dask else (                     # among them
        lambda: [c for c in psutil.Process().children(recursive=True) if c.pid not in before])
    cluster_cpu = cpu_of(dask.processes) if dask else 0.0
    with peak_rss(workers) as peak:
        cpu, began = own_cpu(), time.perf_counter()
        results = build(spec, logs, str(work), beam_args=beam_args)
        seconds, cpu = time.perf_counter() - began, own_cpu() - cpu
    if dask:
        cpu += cpu_of(dask.processes) - cluster_cpu
    rows = sum(s["rows_read"] for s in results)
    return {"rows": rows, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
            "pipeline_seconds": round(results[0]["seconds"], 2),
            "rows_per_second": round(rows / seconds), "rows_per_cpu_second": round(rows / cpu),
            "peak_worker_mb": round(peak[0]) if peak[0] else None}


def arms_for(workers: int) -> dict[str, list[str]]:
    mp = ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
    arms = {"direct": []} if workers == 1 else {}
    arms[f"direct_mp_{workers}"] = mp
    arms[f"dask_{workers}"] = []  # the cluster's address is added when it runs
    return arms


def bench_build(args: argparse.Namespace) -> dict:
    import logging

    from ecdctr.spec.feature_spec import load_spec

    logging.getLogger().setLevel(logging.WARNING)
    spec = load_spec(str(SPEC))
    sizes = {size: logs_for(*map(int, size.split("x"))) for size in args.sizes.split(",")}
    runs: dict[str, dict[str, list[dict]]] = {}
    clusters = {}
    for workers in map(int, args.workers.split(",")):
        dask = DaskWorkers(workers)
        clusters[workers] = {"start_seconds": dask.start_seconds, "idle_worker_mb": dask.idle_mb}
        arms = arms_for(workers)
        try:
            for repeat in range(args.repeats):
                names = list(arms)
                names = names[repeat % len(names):] + names[:repeat % len(names)]
                for size, (logs, _) in sizes.items():
                    for name in names:
                        on_dask = name.startswith("dask")
                        beam_args = dask.beam_args() if on_dask else arms[name]
                        before = load()
                        run = one_build(spec, logs, beam_args, dask if on_dask else None)
                        run.update(load_before=before, load_after=load())
                        runs.setdefault(size, {}).setdefault(name, []).append(run)
                        say(f"{size} {name} #{repeat}: {run}")
        finally:
            dask.close()
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
            "sizes": {s: rows for s, (_, rows) in sizes.items()}, "clusters": clusters,
            "runs": runs, "medians": {size: {name: summary(r) for name, r in arms.items()}
                                      for size, arms in runs.items()}}


def summary(runs: list[dict]) -> dict:
    keys = ("seconds", "cpu_seconds", "pipeline_seconds", "rows_per_second",
            "rows_per_cpu_second", "peak_worker_mb")
    return {k: median([r[k] for r in runs if r[k] is not None])
            for k in keys if any(r[k] is not None for r in runs)}


# ------------------------------------------------------------------------------- training

TRAIN_DAYS = 9  # the 9th is D
TRAIN_CONFIG = ("windows: {tpm_days: 30, cpm_days: 4, actr_days: 3}\ntransfer: {tpm_snapshots: 1}\n"
                "model: {hidden: [16, 8]}\ngate: {max_auc_drop: 0.5}\n"
                "tpm: {hidden: [8], batch_size: 512, max_epochs: 3, validation_share: 0}\n"
                "cpm: {batch_size: 512, max_epochs: 3, validation_share: 0}\n"
                "actr: {batch_size: 256, max_epochs: 2, validation_share: 0}\n")
EPOCH_LINE = re.compile(r"^I\d{4} (\d\d):(\d\d):(\d\d\.\d+) .*\] \[(\w+)\] epoch (\d+) done after "
                        r"(\d+) steps")
CLUSTERS = {"none": {"single": 1}, "multi_worker_mirrored": {"worker": 2},
            "parameter_server": {"chief": 1, "worker": 2, "ps": 1}}


def free_ports(n: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_daily_tasks(folder: Path, strategy: str, date: dt.date) -> dict:
    """`ecdctr daily` by every task of the strategy's cluster; waits for the chief (worker 0
    without one), stops the tasks that serve; returns wall and CPU seconds per task."""
    import subprocess

    jobs = CLUSTERS[strategy]
    ports = iter(free_ports(sum(jobs.values())))
    cluster = {job: [f"127.0.0.1:{next(ports)}" for _ in range(n)] for job, n in jobs.items()}
    procs = {}
    began = time.perf_counter()
    for job, addresses in cluster.items():
        for index in range(len(addresses)):
            env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
            if strategy != "none":
                env["TF_CONFIG"] = json.dumps({"cluster": cluster,
                                               "task": {"type": job, "index": index}})
            with open(folder / f"{job}{index}.log", "w") as err:
                procs[f"{job}{index}"] = subprocess.Popen(
                    [sys.executable, "-m", "ecdctr", "daily", f"--config={folder / 'config.yaml'}",
                     f"--date={date}"], stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=ROOT,
                    start_new_session=True)
    waited = {"none": ["single0"], "multi_worker_mirrored": ["worker0", "worker1"],
              "parameter_server": ["chief0"]}[strategy]
    cpu = {}
    for name in waited:
        _, status, usage = os.wait4(procs[name].pid, 0)
        procs[name].returncode = os.waitstatus_to_exitcode(status)
        if procs[name].returncode:
            raise RuntimeError(f"{strategy} {name} failed: see {folder / (name + '.log')}")
        cpu[name] = round(usage.ru_utime + usage.ru_stime, 1)
    seconds = round(time.perf_counter() - began, 1)
    for name, proc in procs.items():  # parameter_server's workers and ps serve until stopped
        if name not in cpu:
            cpu[name] = round(cpu_of([psutil.Process(proc.pid)]), 1)
            os.killpg(proc.pid, 9)
            proc.wait()
    return {"seconds": seconds, "cpu_seconds": cpu}


def steady_rates(log: Path, batches: dict[str, int]) -> dict[str, float]:
    """Examples/s of each fit after its first epoch (which traces the model), from the
    chief's `epoch k done after n steps` log lines: (n_last - n_1) x batch / their time."""
    epochs: dict[str, list[tuple[float, int]]] = {}
    for line in log.read_text().splitlines():
        if m := EPOCH_LINE.match(line):
            hours, minutes, seconds, step, _, steps = m.groups()
            at = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
            epochs.setdefault(step, []).append((at, int(steps)))
    return {step: round((marks[-1][1] - marks[0][1]) * batches[step]
                        / (marks[-1][0] - marks[0][0]))
            for step, marks in epochs.items() if len(marks) > 1 and step in batches}


def bench_train(args: argparse.Namespace) -> dict:
    from ecdctr.data.simulator import SimConfig, simulate

    logs = DATA / f"train-logs-{args.natural_rows}"
    if not (logs / "summary.json").exists():
        shutil.rmtree(logs, ignore_errors=True)
        summary = simulate(str(logs), START, TRAIN_DAYS, SimConfig(
            natural_rows_per_day=args.natural_rows, users=5000, items=2000, seed=4))
        (logs / "summary.json").write_text(json.dumps(summary))
    date = START + dt.timedelta(days=TRAIN_DAYS - 1)
    runs: dict[str, list[dict]] = {}
    for repeat in range(args.repeats):
        names = list(CLUSTERS)
        for strategy in names[repeat % 3:] + names[:repeat % 3]:
            folder = DATA / f"train-{strategy}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            distribute = "" if strategy == "none" else f"distribute: {{strategy: {strategy}}}\n"
            (folder / "config.yaml").write_text(
                f"spec: {SPEC}\nlogs: {logs}\nwork: {folder / 'work'}\n"
                f"export: {folder / 'export'}\n{TRAIN_CONFIG}{distribute}")
            before = load()
            run = run_daily_tasks(folder, strategy, date)
            report = json.loads((folder / "work" / "reports" / f"{date}.json").read_text())
            run["fits"] = {step: {k: report["steps"][step]["train"].get(k) for k in (
                "examples_per_second", "seconds", "steps", "replicas", "global_batch")}
                for step in ("tpm", "cpm", "actr")}
            chief = {"none": "single0", "multi_worker_mirrored": "worker0",
                     "parameter_server": "chief0"}[strategy]
            run["steady_examples_per_second"] = steady_rates(
                folder / f"{chief}.log", {"tpm": 512, "cpm": 512})
            run.update(load_before=before, load_after=load())
            runs.setdefault(strategy, []).append(run)
            say(f"train {strategy} #{repeat}: {run}")
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
            "natural_rows_per_day": args.natural_rows, "runs": runs}


# --------------------------------------------------------------------------------- model

DAY_ROWS = (10_000_000, 100_000_000, 1_000_000_000)  # ad + natural rows of a production day
SLICE_CPU_SHARE = 0.2  # CPU of each further slice of a day over one pass (BENCHMARKS section 1)
TABLE_IDS = (10_000_000, 100_000_000)
QUIET_RATE = 36_745  # marginal rows per CPU-second in one process, quiet (section 1, 19:42)
BYTES_PER_ROW = 300  # a day's per-row memory in a worker (section 1: 250-300 bytes a row)
PS_TABLE_BYTES = 8 << 30  # table bytes one ps task holds (a 16 GB host, half for the tables)


def slice_plan(day_rows: float, rate: float, slices: int) -> float:
    """Wall hours of a day of day_rows built in `slices` slices, each on a worker of `rate`
    rows per CPU-second: each slice reads the whole day and builds its 1/S of it."""
    return day_rows * (SLICE_CPU_SHARE + (1 - SLICE_CPU_SHARE) / slices) / rate / 3600


def build_model(build: dict) -> dict:
    """Workers, wall hours and memory of a production day's build, from the largest size's
    single-worker Dask run (rows per CPU-second) and its smallest size's worker peak (the
    fixed part); the per-row part is section 1's, measured in fresh processes (a long-lived
    Dask worker keeps the memory of its largest day)."""
    from pipelines.build.discovery import SLICE_BYTES, input_bytes

    med = build["medians"]
    four = sorted((int(k.split("x")[1]), k) for k in med if k.startswith("4x"))
    (_, small), (big_rows, big) = four[0], four[-1]
    rate = med[big]["dask_1"]["rows_per_cpu_second"]
    fixed_mb = med[small]["dask_1"]["peak_worker_mb"]
    files = [f for f in (DATA / f"logs-{big}" / "natural").rglob("*") if f.is_file()]
    weight = sum(input_bytes(str(f), f.stat().st_size) for f in files) / (4 * big_rows)
    rows_per_slice = SLICE_BYTES / weight
    return {"rate_rows_per_cpu_second": rate, "bytes_per_row_in_memory": BYTES_PER_ROW,
            "fixed_worker_mb": round(fixed_mb), "weighted_input_bytes_per_row": round(weight),
            "rows_per_slice": round(rows_per_slice),
            "days": day_plans(rate, fixed_mb, rows_per_slice),
            "days_at_quiet_rate": day_plans(QUIET_RATE, fixed_mb, rows_per_slice)}


def day_plans(rate: float, fixed_mb: float, rows_per_slice: float) -> dict:
    """For each production day, with the default slice_bytes: its slices (one worker each),
    the wall hours of its largest source, a worker's peak MB, the CPU hours of all slices, and
    the wall floor that more slices approach (each re-reads the whole day)."""
    import math

    ad_share = 1 / 11  # the simulator's ad_ratio 0.1 of natural rows
    days = {}
    for total in DAY_ROWS:
        natural, ad = total * (1 - ad_share), total * ad_share
        s_nat, s_ad = (max(1, math.ceil(r / rows_per_slice)) for r in (natural, ad))
        cpu = sum(r * (1 + SLICE_CPU_SHARE * (k - 1)) for r, k in ((natural, s_nat), (ad, s_ad)))
        days[f"{total:,}"] = {
            "workers": s_nat + s_ad,
            "wall_hours": round(slice_plan(natural, rate, s_nat), 2),
            "worker_mb": round(fixed_mb + BYTES_PER_ROW * natural / s_nat / 2**20),
            "cpu_hours": round(cpu / rate / 3600, 1),
            "one_pass_cpu_hours": round(total / rate / 3600, 1),
            "floor_wall_hours": round(natural * SLICE_CPU_SHARE / rate / 3600, 2)}
    return days


def train_model(train: dict) -> dict:
    """Examples/s per worker of each strategy and fit; parameter servers for large tables."""
    from ecdctr.spec.feature_spec import load_spec

    per_worker = {}
    for strategy, runs in train["runs"].items():
        workers = {"none": 1, "multi_worker_mirrored": 2, "parameter_server": 2}[strategy]
        per_worker[strategy] = {step: median([r["steady_examples_per_second"][step] / workers
                                              for r in runs]) for step in ("tpm", "cpm")}
    spec = load_spec(str(SPEC))
    dim = max(f.dim for f in spec.features if f.name in ("user_id", "item_id"))
    per_id = dim * 4 * 3  # float32 weights plus Adam's two slots
    tables = {f"{ids:,}": {"gb_per_table": round(ids * per_id / 2**30, 2),
                           "ps_tasks_per_table": -(-ids * per_id // PS_TABLE_BYTES),
                           "export_gb_per_table": round(ids * dim * 4 / 2**30, 2)}
              for ids in TABLE_IDS}
    return {"examples_per_second_per_worker": per_worker, "dim": dim, "bytes_per_id": per_id,
            "tables": tables}


def machine() -> dict:
    import apache_beam
    import dask

    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "apache_beam": apache_beam.__version__, "dask": dask.__version__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("--sizes", default="4x6000,16x6000,4x24000")
    b.add_argument("--workers", default="1,2,4")
    b.add_argument("--repeats", type=int, default=3)
    t = sub.add_parser("train")
    t.add_argument("--repeats", type=int, default=3)
    t.add_argument("--natural_rows", type=int, default=2000)
    sub.add_parser("model")
    args = parser.parse_args(argv)
    if args.command == "model":
        results = json.loads(RESULTS.read_text())
        result = {"build": build_model(results["build"]), "train": train_model(results["train"])}
        print(json.dumps(result, indent=1))
    else:
        result = bench_build(args) if args.command == "build" else bench_train(args)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}  # read now: another
    results[args.command] = result                                        # command may have run
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
