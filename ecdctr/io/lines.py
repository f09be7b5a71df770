"""Lines of a byte stream with a bound on their length: memory stays flat whatever the input
(a line without end is read in blocks and dropped), and runs of blank lines are skipped in
bulk rather than one by one."""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from typing import Any

DEFAULT_MAX_LINE_BYTES = 1 << 20  # 1 MiB: far above any real impression row
BLOCK = 1 << 16  # bytes read at a time
_BLANK_RUN = re.compile(rb"(?:[ \t\r\x0b\x0c]*\n)+")
_NOT_BLANK = re.compile(rb"[^ \t\r\n\x0b\x0c]")
PREFIX = 200  # bytes of an over-long line kept to show it


class LineReader:
    """Iterates (line number, line) over a binary stream, the line without its end of line
    ('\\n' or '\\r\\n'). A line longer than `limit` bytes comes as (number, None), its length in
    `too_long_bytes` and its first PREFIX bytes in `too_long_prefix`; only `limit` + BLOCK bytes
    are ever held. Blank (whitespace-only) lines are counted in `blank_lines`, not yielded.
    verbatim (for CSV, whose quoted fields may hold empty lines and '\r\n'): every line comes,
    blank ones too, and a '\r' before its '\n' is kept.
    `line` is the number of the last line read completely."""

    def __init__(self, stream: Any, limit: int = DEFAULT_MAX_LINE_BYTES, verbatim: bool = False):
        if limit < 1:
            raise ValueError(f"the line bound must be at least 1 byte, got {limit}")
        self.stream, self.limit, self.verbatim = stream, limit, verbatim
        # A gzip stream is read with read1 (what one decompression step gives), so that the
        # lines before a broken part (a truncated file) are yielded before its error is raised.
        # Any other stream with read: a buffered reader's read1 would bypass its buffer, and
        # on an object store each call would be a request of its own.
        self._read = stream.read1 if isinstance(stream, gzip.GzipFile) else stream.read
        self.line = self.blank_lines = 0
        self.too_long_bytes, self.too_long_prefix = 0, b""
        self._buffer, self._pos, self._eof = b"", 0, False

    def __iter__(self) -> Iterator[tuple[int, bytes | None]]:
        while True:
            buffer, pos = self._buffer, self._pos
            end = buffer.rfind(b"\n", pos)
            if end >= 0:  # every complete line in the buffer at once
                self._pos = end + 1
                yield from self._lines(buffer[pos:end].split(b"\n"))
            elif len(buffer) - pos > self.limit:
                self._drop_rest_of_line()
                self.line += 1
                yield self.line, None
            elif self._eof:
                if buffer[pos:].strip():
                    self._pos = len(buffer)
                    self.line += 1
                    yield self.line, self._cut(buffer, pos, len(buffer))
                elif pos < len(buffer):
                    self.blank_lines += 1
                    self.line += 1
                return
            else:
                self._fill()

    def peek(self) -> bytes:
        """Up to 8 bytes from the first non-blank byte not yet yielded (b"" at the end of the
        stream, or if more than `limit` bytes of blanks come first)."""
        while True:
            self._skip_blank_lines()
            found = _NOT_BLANK.search(self._buffer, self._pos)
            if found:
                return self._buffer[found.start():found.start() + 8]
            if self._eof or len(self._buffer) - self._pos > self.limit:
                return b""
            self._fill()

    def rest(self, limit: int) -> bytes | None:
        """Everything not yet yielded (the current buffer and the rest of the stream), or None
        if that is more than `limit` bytes (then the stream is read to its end in blocks)."""
        data = [self._buffer[self._pos:]]
        size = len(data[0])
        while size <= limit:
            block = self._read(BLOCK)
            if not block:
                return b"".join(data)
            data.append(block)
            size += len(block)
        while self._read(BLOCK):
            pass
        return None

    def _lines(self, lines: list[bytes]) -> Iterator[tuple[int, bytes | None]]:
        """The non-blank ones of complete lines (without their '\n'), numbered; the blank ones
        counted."""
        number, blank, limit = self.line, 0, self.limit
        for raw in lines:
            number += 1
            if (not raw or not raw.strip()) and not self.verbatim:
                blank += 1
                continue
            self.line, self.blank_lines, blank = number, self.blank_lines + blank, 0
            if raw[-1:] == b"\r" and not self.verbatim:
                raw = raw[:-1]
            if len(raw) > limit:
                self.too_long_bytes, self.too_long_prefix = len(raw), raw[:PREFIX]
                yield number, None
            else:
                yield number, raw
        self.line, self.blank_lines = number, self.blank_lines + blank

    def _cut(self, buffer: bytes, start: int, end: int) -> bytes | None:
        line_end = end - 1 if end > start and buffer[end - 1] == 0x0D else end
        if line_end - start > self.limit:
            self.too_long_bytes = line_end - start
            self.too_long_prefix = buffer[start:start + PREFIX]
            return None
        return buffer[start:line_end]

    def _skip_blank_lines(self) -> None:
        match = _BLANK_RUN.match(self._buffer, self._pos)
        if match:
            count = self._buffer.count(b"\n", self._pos, match.end())
            self.blank_lines += count
            self.line += count
            self._pos = match.end()

    def _fill(self) -> None:
        block = self._read(BLOCK)
        if not block:
            self._eof = True
        self._buffer = self._buffer[self._pos:] + block
        self._pos = 0

    def _drop_rest_of_line(self) -> None:
        """Reads the current line to its end without keeping it; the buffer then holds what
        follows it."""
        self.too_long_prefix = self._buffer[self._pos:self._pos + PREFIX]
        length = len(self._buffer) - self._pos
        while True:
            block = self._read(BLOCK)
            if not block:
                self._buffer, self._pos, self._eof = b"", 0, True
                break
            end = block.find(b"\n")
            if end >= 0:
                length += end
                self._buffer, self._pos = block[end + 1:], 0
                break
            length += len(block)
        self.too_long_bytes = length
