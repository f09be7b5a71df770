"""Files through Beam's FileSystems (local, s3 via boto3, gs, hdfs), for the build's driver and
its workers: the workers reach every data path here and never load TensorFlow or
tensorflow-io. Object stores have no folders and no atomic rename. `FILES` is this layer's side
of ecdctr/io/commit.py."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any, BinaryIO

from apache_beam.io.aws import s3io
from apache_beam.io.aws.clients.s3.boto3_client import Client as BeamS3Client
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from ecdctr.io import storage

logger = logging.getLogger(__name__)


def pipeline_args(beam_args: Sequence[str], paths: Sequence[str]) -> list[str]:
    """beam_args, plus Beam's S3 options from the standard AWS variables when a path is on
    s3:// (each only if beam_args does not set it already)."""
    args = list(beam_args)
    if any(storage.scheme(p) == "s3" for p in paths):
        given = {a.split("=", 1)[0] for a in args if a.startswith("--")}
        args += [o for o in storage.beam_s3_options() if o.split("=", 1)[0] not in given]
    return args


class BoundedRetries(logging.Filter):
    """Ends Beam's retries of a failing S3 call at storage.timeout(). Beam's S3 file system
    retries a failed call up to 7 times with waits of about 5, 10, 20, ... 320 s (fixed in
    apache_beam.utils.retry: no pipeline option changes them), and logs each wait with the
    error's traceback on the `apache_beam.utils.retry` logger just before it sleeps. This
    filter on that logger logs one line per wait instead, and when the call has been failing
    for so long that the next wait would pass the bound, raises StorageError from that log
    call, which ends the retry loop (the error names the endpoint)."""

    def __init__(self) -> None:
        super().__init__()
        self.failing: dict[tuple[int, str], tuple[float, float]] = {}  # -> (first, last failure)

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if len(args) < 3 or "S3ClientError" not in str(args[2]):
            return True
        wait, call, error = float(args[0]), str(args[1]), " ".join(str(args[2]).split())[:300]
        key, now, bound = (threading.get_ident(), call), time.monotonic(), storage.timeout()
        first, last = self.failing.get(key, (now, now))
        if now - last > bound:  # an earlier episode of the same call, since recovered
            first = now
        self.failing[key] = (first, now)
        where = storage.endpoint("s3://")
        if now - first + wait > bound:
            del self.failing[key]
            raise storage.StorageError(
                f"Beam's S3 call {call} failed for {now - first:.0f} s: the store at {where} "
                f"failed ({error}). Fix: check that {where} is up and reachable from this "
                f"machine, then rerun; {storage.TIMEOUT_VARIABLE}={bound:g} s bounds the wait")
        logger.warning(f"Beam's S3 call {call} failed ({error}); retrying in {wait:.0f} s "
                       f"(giving up {bound - (now - first):.0f} s from now)")
        return False


_BOUNDED_RETRIES = BoundedRetries()


def bound_retries() -> None:
    """Bounds Beam's retries of S3 calls in this process (see BoundedRetries); idempotent.
    Warnings of Beam's retry logger must stay on for it to see them."""
    retry_logger = logging.getLogger("apache_beam.utils.retry")
    if _BOUNDED_RETRIES not in retry_logger.filters:
        retry_logger.addFilter(_BOUNDED_RETRIES)
    if retry_logger.getEffectiveLevel() > logging.WARNING:
        retry_logger.setLevel(logging.WARNING)


def configure(beam_args: Sequence[str], paths: Sequence[str]) -> PipelineOptions:
    """The pipeline options for beam_args and paths (see pipeline_args), also given to this
    process's FileSystems so that its own calls reach the same stores as the workers'; Beam's
    S3 retries are bounded here (bound_retries; the build's workers do it in their setup)."""
    bound_retries()
    options = PipelineOptions(pipeline_args(beam_args, paths))
    FileSystems.set_options(options)
    return options


def open_raw(path: str) -> BinaryIO:
    """A file opened for reading its stored bytes (no decompression)."""
    if storage.scheme(path) == "s3":
        return _s3io(path).open(path, "rb")
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def create(path: str) -> BinaryIO:
    """A new file opened for writing its stored bytes (no compression)."""
    if storage.scheme(path) == "s3":
        return _s3io(path).open(path, "wb")
    return FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED)


def write_bytes(path: str, data: bytes, sync: bool = False) -> None:
    """Writes a whole file; sync=True also fsyncs it where the file system allows."""
    if not data and storage.scheme(path) == "s3":
        _put_empty_s3_object(path)
        return
    with create(path) as f:
        f.write(data)
        if sync:  # a local file: durable before it is renamed into place
            with contextlib.suppress(AttributeError, OSError, ValueError):  # no file descriptor
                f.flush()
                os.fsync(f.fileno())


# id(options), or the AWS variables' options when none are set -> (options, boto3 client)
_S3_CLIENTS: dict[int | tuple[str, ...], tuple[Any, Any]] = {}


def _s3_client(path: str) -> Any:
    """This process's boto3 client for the options Beam's S3 file system holds (the standard
    AWS variables when none were set), made once: making one parses botocore's JSON models,
    0.2 s of CPU here, and Beam's S3 file system makes one for every file it opens."""
    options = getattr(FileSystems.get_filesystem(path), "_options", None)
    key = id(options) if options is not None else tuple(storage.beam_s3_options())
    if key not in _S3_CLIENTS:
        made = options if options is not None else PipelineOptions(list(key))
        _S3_CLIENTS[key] = (options, BeamS3Client(made).client)
    return _S3_CLIENTS[key][1]


class _SharedClient(BeamS3Client):
    """Beam's boto3 wrapper (apache-beam 2.77's attributes) over a client made once per
    process: BeamS3Client.__init__ would make a new session and client."""

    def __init__(self, client: Any) -> None:  # not super().__init__: see above
        self.client = client
        self._download_request = None
        self._download_stream = None
        self._download_pos = 0


def _s3io(path: str) -> Any:
    """Beam's S3IO over this process's boto3 client (_s3_client): what Beam's S3 file system
    opens a file with, less a new client per file (they took 55 s of a 70 s build of 16
    partitions on a local S3 server). boto3 clients are thread-safe; Beam's wrapper of one
    keeps a download's position, so each call gets a wrapper of its own."""
    return s3io.S3IO(client=_SharedClient(_s3_client(path)))


def _put_empty_s3_object(path: str) -> None:
    """Beam's S3 writer always uploads in parts and S3 refuses a multipart upload without
    parts, so an empty object is one plain PUT."""
    bucket, _, key = path[len("s3://"):].partition("/")
    _s3_client(path).put_object(Bucket=bucket, Key=key, Body=b"")


def read_bytes(path: str) -> bytes:
    """A whole file's stored bytes."""
    with open_raw(path) as f:
        return f.read()


def exists(path: str) -> bool:
    """Whether a file or folder exists at path."""
    return FileSystems.exists(path)


def has_dirs(path: str) -> bool:
    """Whether path's file system has real folders (local, HDFS) rather than key prefixes."""
    return FileSystems.get_filesystem(path).has_dirs()


def makedirs(path: str) -> None:
    """Creates folder path and its parents where folders exist (object stores have none)."""
    if has_dirs(path) and not FileSystems.exists(path):
        FileSystems.mkdirs(path)


def match(patterns: list[str]) -> list[str]:
    """Paths matching any of the patterns (`**` crosses folders), sorted."""
    results = FileSystems.match(patterns) if patterns else []
    return sorted({m.path for result in results for m in result.metadata_list})


def sizes(pattern: str) -> dict[str, int]:
    """{path: bytes} of the files matching pattern (one listing)."""
    return {m.path: m.size_in_bytes for result in FileSystems.match([pattern])
            for m in result.metadata_list}


def files_under(folder: str) -> list[str]:
    """Every file below folder, at any depth (none if it does not exist)."""
    return match([storage.join(folder, "**")])


def delete(paths: list[str]) -> None:
    """Deletes the given files (or folders, with everything below them)."""
    FileSystems.delete(paths)


def delete_tree(folder: str) -> None:
    """Deletes folder and everything below it, if it exists."""
    if has_dirs(folder):
        if FileSystems.exists(folder):
            FileSystems.delete([folder])
        return
    files = files_under(folder)
    if files:
        FileSystems.delete(files)


def rename(sources: list[str], destinations: list[str]) -> None:
    """Renames each source to its destination (object stores: copy, then delete)."""
    FileSystems.rename(sources, destinations)


def move_folder(source: str, destination: str) -> None:
    """Renames folder source to destination, which must not exist (file systems with folders:
    local, HDFS; on object stores move the files, see rename)."""
    makedirs(storage.dirname(destination))
    FileSystems.rename([source], [destination])


class BeamFiles:
    """This module's file operations as commit.Files, for the build's publish."""

    join = staticmethod(storage.join)
    dirname = staticmethod(storage.dirname)
    renames_atomically = staticmethod(has_dirs)
    exists = staticmethod(exists)
    makedirs = staticmethod(makedirs)
    write_bytes = staticmethod(write_bytes)
    rename = staticmethod(move_folder)
    delete_tree = staticmethod(delete_tree)

    def listdir(self, folder: str) -> list[str]:
        """Sorted names of the files and folders right below folder (on object stores, the
        names that have files below them)."""
        if not storage.is_remote(folder):
            return storage.listdir(folder)
        prefix = folder.rstrip("/") + "/"
        return sorted({path[len(prefix):].split("/", 1)[0] for path in files_under(folder)})

    def replace(self, source: str, destination: str) -> None:
        """Renames file source over destination."""
        rename([source], [destination])

    def remove(self, path: str) -> None:
        """Deletes file path if it exists."""
        if exists(path):
            delete([path])

    def copy_tree(self, source: str, destination: str, last: Sequence[str]) -> None:
        """Copies folder source to destination, the relative paths in `last` after the rest."""
        prefix = source.rstrip("/") + "/"
        relative = [path[len(prefix):] for path in files_under(source)]
        ordered = [r for r in relative if r not in last] + [r for r in last if r in relative]
        for name in ordered:
            FileSystems.copy([storage.join(source, name)], [storage.join(destination, name)])


FILES = BeamFiles()
