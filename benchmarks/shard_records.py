"""What the shard records (size and crc32c of each shard, ecdctr.io.digest) cost the build:
ecdctr.io.tfrecord.ShardWriter writing the same records with its digest and without it, in
CPU seconds (median of --repeats, arms alternating), and the check of the written shard
(read back and crc32c'd) that `build --skip_built` runs on a built day.

    python benchmarks/shard_records.py [--records 200000] [--repeats 5]

The records are random-length (200-400 bytes) byte strings of a fixed seed, written to one
GZIP shard at zlib level 6, as the build writes its shards.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import random
import statistics
import subprocess
import tempfile
import time

from ecdctr.io import digest
from ecdctr.io.tfrecord import ShardWriter, shard_name


def write(folder: str, records: list[bytes]) -> tuple[float, dict]:
    """CPU seconds to write records into one shard in folder, and the shard's record."""
    began = time.process_time()
    with contextlib.ExitStack() as stack:
        writer = ShardWriter(folder, 1, stack)
        for record in records:
            writer.write(0, record)
        writer.close()
        written = writer.records()
    return time.process_time() - began, written.get(shard_name(0, 1), {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(0)
    records = [rng.randbytes(rng.randint(200, 400)) for _ in range(args.records)]
    digesting = digest.DigestingWriter.write
    times: dict[str, list[float]] = {"plain": [], "digest": []}
    checks = []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            for arm in ("plain", "digest"):
                digest.DigestingWriter.write = (digesting if arm == "digest" else
                                                lambda self, data: self.raw.write(data))
                seconds, _ = write(folder, records)
                times[arm].append(seconds)
            digest.DigestingWriter.write = digesting
            path = os.path.join(folder, shard_name(0, 1))
            began = time.process_time()
            with open(path, "rb") as f:
                digest.stream_record(f)
            checks.append(time.process_time() - began)
        size = os.path.getsize(path)
    plain, digested = statistics.median(times["plain"]), statistics.median(times["digest"])
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"{dt.datetime.now().isoformat(timespec='seconds')}, {args.records:,} records, "
          f"shard {size / 1e6:.1f} MB, uptime: {load}")
    print(f"write CPU s (median of {args.repeats}): plain {plain:.3f}, with digest {digested:.3f}, "
          f"ratio {digested / plain:.3f}")
    print(f"check (read + crc32c) CPU s: {statistics.median(checks):.4f} "
          f"({size / 1e6 / max(statistics.median(checks), 1e-9):,.0f} MB per CPU second)")


if __name__ == "__main__":
    main()
