"""The build's S3 files (BENCHMARKS §21): writing and reading back small files through
ecdctr.io.beam_files (one boto3 client per process) against Beam's FileSystems (a new boto3
session and client for every file opened, the way the build wrote before), on a local moto S3
server started here. Both arms write the same files, one after the other, in turns; per-file
wall and CPU milliseconds, medians of --repeats.

    python benchmarks/s3_files.py [--files 64] [--bytes 4096] [--repeats 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent


def _server() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("the moto S3 server did not start")


def _arm(how: str, prefix: str, files: int, size: int) -> tuple[float, float]:
    """(wall, CPU) seconds to write `files` files of `size` bytes under prefix and read them back."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    from ecdctr.io import beam_files

    data = os.urandom(size)
    paths = [f"{prefix}/{how}/{i:05d}.bin" for i in range(files)]
    wall, cpu = time.perf_counter(), time.process_time()
    for path in paths:
        if how == "shared":
            beam_files.write_bytes(path, data)
        else:
            with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                f.write(data)
    for path in paths:
        if how == "shared":
            got = beam_files.read_bytes(path)
        else:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                got = f.read()
        assert got == data, path
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=64)
    parser.add_argument("--bytes", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(HERE / "results" / "s3_files.json"))
    args = parser.parse_args()
    server, endpoint = _server()
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"})
    try:
        import boto3

        from ecdctr.io import beam_files

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        beam_files.configure([], ["s3://bench"])
        started, load = dt.datetime.now(dt.UTC), os.getloadavg()
        _arm("shared", "s3://bench/warmup", 2, args.bytes)  # one-time costs out of both arms
        _arm("beam", "s3://bench/warmup", 2, args.bytes)
        runs: dict[str, list[tuple[float, float]]] = {"shared": [], "beam": []}
        for r in range(args.repeats):
            for how in ("beam", "shared") if r % 2 else ("shared", "beam"):
                runs[how].append(_arm(how, f"s3://bench/r{r}", args.files, args.bytes))
    finally:
        server.terminate()
        server.wait(timeout=10)
    per_file = {how: {"wall_ms": 1000 * statistics.median(w for w, _ in rs) / args.files,
                      "cpu_ms": 1000 * statistics.median(c for _, c in rs) / args.files,
                      "wall_s_all": [round(w, 3) for w, _ in rs],
                      "cpu_s_all": [round(c, 3) for _, c in rs]} for how, rs in runs.items()}
    result = {"started": started.isoformat(timespec="seconds"), "load_average_start": load,
              "load_average_end": os.getloadavg(), "python": sys.version.split()[0],
              "files": args.files, "bytes": args.bytes, "repeats": args.repeats,
              "per_file_write_and_read": per_file,
              "cpu_ratio_beam_over_shared": per_file["beam"]["cpu_ms"] / per_file["shared"]["cpu_ms"],
              "wall_ratio_beam_over_shared": per_file["beam"]["wall_ms"] / per_file["shared"]["wall_ms"]}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    sys.stdout.flush()
    os._exit(0)  # tensorflow-io's S3 client, when loaded, aborts the interpreter at exit


if __name__ == "__main__":
    main()
