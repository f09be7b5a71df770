"""Proof that a file is the one the pipeline wrote: its size and crc32c (google-crc32c),
taken while it is written and compared before it is trusted. No TensorFlow: the build's Beam
workers use it."""

from __future__ import annotations

from typing import Any, BinaryIO

import google_crc32c

READ_BYTES = 1 << 22  # a file is hashed this many bytes at a time


class Digest:
    """The size and crc32c of bytes seen so far."""

    def __init__(self) -> None:
        self.size = 0
        self.checksum = google_crc32c.Checksum()

    def update(self, data: bytes) -> None:
        """Takes more bytes of the file."""
        self.size += len(data)
        self.checksum.update(data)

    def record(self) -> dict:
        """{"size": bytes, "crc32c": hex}, as a manifest records a file."""
        return {"size": self.size, "crc32c": self.checksum.hexdigest().decode("ascii")}


class DigestingWriter:
    """A binary file object that digests what is written through it (for gzip.GzipFile's
    fileobj: the digest is of the stored, compressed bytes)."""

    def __init__(self, raw: BinaryIO):
        self.raw, self.digest = raw, Digest()

    def write(self, data: bytes) -> int:
        self.digest.update(data if isinstance(data, bytes) else bytes(data))
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def record_of(data: bytes) -> dict:
    """The record (see Digest.record) of a whole file's bytes."""
    digest = Digest()
    digest.update(data)
    return digest.record()


def stream_record(f: BinaryIO) -> dict:
    """The record of what is left to read in f, read READ_BYTES at a time."""
    digest = Digest()
    while chunk := f.read(READ_BYTES):
        digest.update(chunk)
    return digest.record()


def is_record(value: Any) -> bool:
    """Whether value has a record's shape: {"size": int >= 0, "crc32c": 8 hex digits}."""
    return (isinstance(value, dict) and isinstance(value.get("size"), int)
            and not isinstance(value.get("size"), bool) and value["size"] >= 0
            and isinstance(value.get("crc32c"), str) and len(value["crc32c"]) == 8)


def size_problem(path: str, record: dict, size: int) -> str | None:
    """What is wrong with a file of `size` bytes recorded as `record` (None: the size fits)."""
    if size == record["size"]:
        return None
    how = "truncated" if size < record["size"] else "grown"
    return f"{path}: {size:,} bytes, {record['size']:,} written ({how})"


def content_problem(path: str, record: dict, actual: dict) -> str | None:
    """What is wrong with a file whose record (stream_record) is `actual` (None: it is the
    file that was written)."""
    problem = size_problem(path, record, actual["size"])
    if problem is None and actual["crc32c"] != record["crc32c"]:
        problem = (f"{path}: content changed since written (crc32c {actual['crc32c']}, "
                   f"{record['crc32c']} written)")
    return problem
