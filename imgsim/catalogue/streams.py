"""A manifest's bytes: decompression, a whole-file integrity check, and lines in bounded memory.

Why: one worker streams the manifest after preflight looked only at its head, so damage further
in shows up mid-job. gzip finds a truncated or corrupt member only when it reaches it, after
handing out the rows before it: `.gz` files are therefore decompressed to their end once in
preflight (`check_compressed`), and a file damaged by the time a worker reads it raises
`DamagedFileError` rather than ending early with fewer rows. And a line is as big as its writer
made it: `bounded_lines` reads fixed-size blocks and never holds more than `max_bytes` of a line,
so a line over the cap is skipped while streaming and reported by number, not materialised.
Lines are not decoded strictly: a line that is not valid UTF-8 is handed on with its problem
(and its bytes as surrogate escapes), so that its reader can fail that one row and keep its id.
"""
from __future__ import annotations

import codecs
import gzip
import zlib
from typing import BinaryIO, Iterator, NamedTuple, Optional

BLOCK_BYTES = 64 * 1024
# What gzip raises on damaged input: a truncated stream, bad deflate data, a bad header or CRC.
GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


class DamagedFileError(ValueError):
    """A compressed manifest is truncated or corrupt: the run cannot know its whole input."""


def is_compressed(path: str) -> bool:
    return path.lower().endswith(".gz")


def decompressed(raw: BinaryIO, path: str) -> BinaryIO:
    """The manifest's own bytes: .gz files are decompressed on the fly."""
    return gzip.GzipFile(fileobj=raw, mode="rb") if is_compressed(path) else raw


def damaged(path: str, error: BaseException) -> DamagedFileError:
    return DamagedFileError(f"{path}: the compressed manifest is truncated or corrupt "
                            f"({type(error).__name__}: {error}); re-create or re-upload it")


def check_compressed(raw: BinaryIO, path: str) -> None:
    """Decompress a .gz manifest to its end, in blocks; DamagedFileError naming it when it is damaged."""
    stream = gzip.GzipFile(fileobj=raw, mode="rb")
    try:
        while stream.read(1024 * 1024):
            pass
    except GZIP_ERRORS as e:
        raise damaged(path, e) from None


class Line(NamedTuple):
    """One physical line (ending at b"\\n") of a manifest. A tuple: there is one per line."""

    number: int  # 1-based
    text: str  # with its line ending; bytes that are not UTF-8 as surrogate escapes; over the cap: its head
    size: int  # bytes, line ending included
    quotes: int  # '"' characters in the whole line (a CSV record goes on while a quote is open)
    problem: Optional[str] = None  # why the line cannot be read as it is
    whole: bool = True  # False when the line was over the cap: text is only its head


def bounded_lines(stream: BinaryIO, max_bytes: int, block_bytes: int = BLOCK_BYTES) -> Iterator[Line]:
    """The stream's lines, holding at most max_bytes + block_bytes of it at any time.

    A line over max_bytes (its ending included) is read to its end without being kept: it comes
    as a Line with its first max_bytes bytes as text and a problem. A UTF-8 byte order mark at
    the start is dropped."""
    number = 0
    head = b""  # the current line's first bytes, at most max_bytes + 1 of them
    size = quotes = 0
    while True:
        block = stream.read(block_bytes)
        if not block:
            if size:
                number += 1
                yield _line(number, head, size, quotes, max_bytes)
            return
        parts = block.split(b"\n")
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            if not last:
                part += b"\n"
            if len(head) <= max_bytes:
                head += part[: max_bytes + 1 - len(head)]
            size += len(part)
            quotes += part.count(b'"')
            if not last:
                number += 1
                yield _line(number, head, size, quotes, max_bytes)
                head, size, quotes = b"", 0, 0


def _line(number: int, data: bytes, size: int, quotes: int, max_bytes: int) -> Line:
    if number == 1 and data.startswith(codecs.BOM_UTF8):
        data, size = data[len(codecs.BOM_UTF8):], size - len(codecs.BOM_UTF8)
    if size > max_bytes:
        return Line(number, data[:max_bytes].decode("utf-8", "surrogateescape"), size, quotes,
                    f"the line is {size:,} bytes, over --max-metadata-bytes ({max_bytes:,})",
                    whole=False)
    try:
        return Line(number, data.decode("utf-8"), size, quotes)
    except UnicodeDecodeError as e:
        return Line(number, data.decode("utf-8", "surrogateescape"), size, quotes,
                    f"not valid UTF-8 (byte 0x{data[e.start]:02x} at byte {e.start + 1} of the line)")
