"""TFRecord files without TensorFlow: the record framing and a writer of a day's GZIP shards,
for the build's Beam workers (which never load TensorFlow)."""

from __future__ import annotations

import contextlib
import gzip
import io
import struct
from typing import Any

import google_crc32c

from ecdctr.io import beam_files, storage
from ecdctr.io.digest import DigestingWriter, record_of

FLUSH_BYTES = 1 << 20  # a shard's framed records are written about this many bytes at a time


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord_frame(data: bytes) -> bytes:
    """One TFRecord: uint64 length, masked crc32c of the length, data, masked crc32c of data."""
    length = struct.pack("<Q", len(data))
    return b"".join((length, struct.pack("<I", _masked_crc(length)), data,
                     struct.pack("<I", _masked_crc(data))))


def shard_name(shard: int, shards: int) -> str:
    """The file name of shard `shard` of `shards` (part-0000k-of-0000n.tfrecord.gz)."""
    return f"part-{shard:05d}-of-{shards:05d}.tfrecord.gz"


def write_empty_shard(path: str) -> dict:
    """A GZIP TFRecord file without records (a shard no row hashed to); returns its record
    (ecdctr.io.digest: size and crc32c)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0):
        pass
    beam_files.write_bytes(path, buffer.getvalue())
    return record_of(buffer.getvalue())


class ShardWriter:
    """The GZIP TFRecord shards of one day in `folder`, each opened at its first record and
    written about FLUSH_BYTES at a time, through Beam's FileSystems; the open files are
    closed by `stack`. Each file's stored bytes are digested as they are written (`records`)."""

    def __init__(self, folder: str, shards: int, stack: contextlib.ExitStack):
        self.folder, self.shards, self.stack = folder, shards, stack
        self.files: list[Any] = [None] * shards
        self.digesting: dict[int, DigestingWriter] = {}
        self.buffers: list[list[bytes]] = [[] for _ in range(shards)]
        self.sizes = [0] * shards

    def write(self, shard: int, record: bytes) -> None:
        """Appends one record (a serialized Example) to shard `shard`."""
        frame = tfrecord_frame(record)
        self.buffers[shard].append(frame)
        self.sizes[shard] += len(frame)
        if self.sizes[shard] > FLUSH_BYTES:
            self.flush(shard)

    def flush(self, shard: int) -> None:
        """Writes shard `shard`'s buffered records, opening its file first if need be."""
        if self.files[shard] is None:
            raw = self.stack.enter_context(beam_files.create(
                storage.join(self.folder, shard_name(shard, self.shards))))
            self.digesting[shard] = DigestingWriter(raw)
            self.files[shard] = self.stack.enter_context(
                gzip.GzipFile(fileobj=self.digesting[shard], mode="wb", compresslevel=6, mtime=0))
        self.files[shard].write(b"".join(self.buffers[shard]))
        self.buffers[shard], self.sizes[shard] = [], 0

    def close(self) -> None:
        """Writes what every shard still buffers and ends each gzip stream (the raw files
        close with the stack)."""
        for shard in range(self.shards):
            if self.buffers[shard]:
                self.flush(shard)
            if self.files[shard] is not None:
                self.files[shard].close()

    def records(self) -> dict[str, dict]:
        """{file name: its record (size, crc32c)} of the shards written (after close)."""
        return {shard_name(shard, self.shards): writer.digest.record()
                for shard, writer in sorted(self.digesting.items())}
