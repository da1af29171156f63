"""Hashes: xxh3-128 of files, ranges and parts, and S3's own checksums in the same pass.

Everything here is synchronous and may take seconds on a 10 GB file: callers on the event loop
run it with `await asyncio.to_thread(...)` so signal handling and other downloads keep going.
xxhash releases the GIL on large buffers, so hashing in threads runs truly in parallel.
"""

from __future__ import annotations

import base64
import hashlib
import mmap
import os
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import xxhash

from fetcher.cache import directio
from fetcher.errors import CacheError

HASH_BLOCK = 8 * 1024 * 1024  # large reads keep syscalls and GIL round-trips negligible


def _blocks(path: Path) -> Iterator[memoryview]:
    """Yield views of one reused buffer: each view is valid only until the next one is taken."""
    buf = bytearray(HASH_BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        if hasattr(os, "posix_fadvise"):
            # Doubles the kernel's readahead: hashing a cold 10 GB shard is read-bound.
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while n := f.readinto(view):
            yield view[:n]


def xxh3_file(path: Path) -> str:
    """xxh3-128 hex digest of the whole file."""
    h = xxhash.xxh3_128()
    for block in _blocks(path):
        h.update(block)
    return h.hexdigest()


def xxh3_range(fd: int, offset: int, length: int, buf: bytearray | None = None) -> str:
    """xxh3-128 of `length` bytes at `offset`; pass `buf` to reuse one buffer across calls."""
    return _hash_range(xxhash.xxh3_128(), fd, offset, length, buf)


def sha256_range(fd: int, offset: int, length: int) -> str:
    """sha256 hex of `length` bytes at `offset` (a signed part kept from an interrupted run)."""
    return _hash_range(hashlib.sha256(), fd, offset, length, None)


def _hash_range(h: Any, fd: int, offset: int, length: int, buf: bytearray | None) -> str:
    view = memoryview(buf if buf is not None else bytearray(max(1, min(length, HASH_BLOCK))))
    done = 0
    while done < length:
        n = _pread_into(fd, view[: min(len(view), length - done)], offset + done)
        if n == 0:
            # Parts live in preallocated files, so a short read means the file was cut.
            raise CacheError(f"range {offset}+{length} runs past the end of the file at {done}")
        h.update(view[:n])
        done += n
    return str(h.hexdigest())


def composite_xxh3(part_digests: Iterable[str]) -> str:
    """xxh3-128 over the parts' xxh3-128 digests, in order: a file's own digest when nothing
    gives a whole-file reference, computed from the parts as they arrive (issue 7: reading a
    file back to hash it halved the fetch rate once writes bypass the page cache)."""
    h = xxhash.xxh3_128()
    for digest in part_digests:
        h.update(bytes.fromhex(digest))
    return h.hexdigest()


def file_digest(path: Path, part_size: int | None) -> str:
    """What the cache state records for a file: its xxh3-128, or the composite over parts."""
    if part_size is None:
        return xxh3_file(path)
    _, parts = part_hashes(path, part_size)
    # A zero-byte file is fetched as one empty part (transfer/parts.plan_parts).
    return composite_xxh3(parts or [xxhash.xxh3_128_hexdigest(b"")])


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], offset)
    data = os.pread(fd, len(view), offset)  # platforms without preadv: one copy per block
    view[: len(data)] = data
    return len(data)


def part_hashes(path: Path, part_size: int) -> tuple[str, list[str]]:
    """Whole-file hash and the hash of each `part_size` part, in one pass over the file.

    Part boundaries need not fall on block boundaries: a block may feed the end of one part and
    the start of the next. A zero-byte file has no parts.
    """
    if part_size <= 0:
        raise ValueError(f"part_size must be positive, got {part_size}")
    whole, part = xxhash.xxh3_128(), xxhash.xxh3_128()
    parts: list[str] = []
    filled = 0  # bytes already in the current part
    for block in _blocks(path):
        whole.update(block)
        i = 0
        while i < len(block):
            take = min(len(block) - i, part_size - filled)
            part.update(block[i : i + take])
            i, filled = i + take, filled + take
            if filled == part_size:
                parts.append(part.hexdigest())
                part.reset()
                filled = 0
    if filled:
        parts.append(part.hexdigest())
    return whole.hexdigest(), parts


# --- S3 checksums, in the same pass as xxh3 ---------------------------------------------------


class FileDigests:
    """xxh3-128 of a whole file and, in the same pass, S3's checksum `extra` (sha256, sha1 or
    crc32, base64 as S3 reports it), fed range by range in file order from the file itself."""

    def __init__(self, extra: str | None = None) -> None:
        self.xxh3 = xxhash.xxh3_128()
        self.other: Any = _s3_hasher(extra) if extra else None
        self.hashed = 0  # bytes from offset 0 already fed
        self._buf: mmap.mmap | None = None

    def feed(self, fd: int, length: int, direct_fd: int | None = None) -> None:
        """Hash the next `length` bytes of the file (a thread: large reads, GIL released);
        `direct_fd` reads them without the page cache (see directio.py)."""
        if self._buf is None:
            # One buffer for the whole file: a fresh 8 MiB per part was 1/4 of the bytes
            # hashed again in page faults.
            self._buf = directio.aligned_buffer(HASH_BLOCK)
        end = self.hashed + length
        while self.hashed < end:
            block = directio.pread_into(
                fd, direct_fd, self._buf, min(HASH_BLOCK, end - self.hashed), self.hashed
            )
            if not block:
                raise CacheError(f"file ended at {self.hashed} of {end} bytes while hashing")
            self.xxh3.update(block)
            if self.other is not None:
                self.other.update(block)
            self.hashed += len(block)

    def result(self) -> tuple[str, str | None]:
        other = base64.b64encode(self.other.digest()).decode() if self.other is not None else None
        return str(self.xxh3.hexdigest()), other


class _Crc32:
    def __init__(self) -> None:
        self.value = 0

    def update(self, data: memoryview) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


def s3_checksum(algorithm: str, data: bytes | bytearray | memoryview) -> str:
    """S3's checksum `algorithm` of bytes in memory (a small file's body), base64 as S3 sends."""
    hasher = _s3_hasher(algorithm)
    hasher.update(data)
    return base64.b64encode(hasher.digest()).decode()


def _s3_hasher(algorithm: str) -> Any:
    return _Crc32() if algorithm == "crc32" else hashlib.new(algorithm)
