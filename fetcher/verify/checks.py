"""Integrity checks: xxh3-128 hashes of files and ranges, and safetensors / index validation.

Everything here is synchronous and may take seconds on a 10 GB file: callers on the event loop
run it with `await asyncio.to_thread(...)` so signal handling and other downloads keep going.
xxhash releases the GIL on large buffers, so hashing in threads runs truly in parallel.

The safetensors checks read only the header (at most 100 MiB, usually a few KiB) and compare it
with the file size, never the weights: a truncated or padded shard is refused in milliseconds.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import mmap
import os
import stat
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import xxhash

from fetcher.cache import directio
from fetcher.errors import CacheError, InvalidModel

HASH_BLOCK = 8 * 1024 * 1024  # large reads keep syscalls and GIL round-trips negligible

# Same limit spirit as the safetensors crate: a header is metadata, never a payload.
MAX_HEADER = 100 * 1024 * 1024
INDEX_SUFFIX = ".safetensors.index.json"

# Bits per element. Sub-byte types (F4, F6) are packed, so a tensor must fill whole bytes.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "F64": 64,
    "I64": 64,
    "U64": 64,
    "C64": 64,
}


# --- hashing ---------------------------------------------------------------------------------


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
    view = memoryview(buf if buf is not None else bytearray(max(1, min(length, HASH_BLOCK))))
    h = xxhash.xxh3_128()
    done = 0
    while done < length:
        n = _pread_into(fd, view[: min(len(view), length - done)], offset + done)
        if n == 0:
            # Parts live in preallocated files, so a short read means the file was cut.
            raise CacheError(f"range {offset}+{length} runs past the end of the file at {done}")
        h.update(view[:n])
        done += n
    return h.hexdigest()


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
    # A zero-byte file is fetched as one empty part (partget.plan_parts).
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


# --- safetensors -----------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class _Span:
    begin: int
    end: int
    name: str


def _pread_exact(fd: int, length: int, offset: int) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < length:
        chunk = os.pread(fd, length - got, offset + got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of two equal keys; a header that names a tensor twice is
    # ambiguous, and which one a loader picks is not ours to guess.
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key")
    return out


def _read_header(path: Path, name: str) -> tuple[dict[str, Any], int]:
    """The parsed JSON header and the length of the data section after it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
        raise InvalidModel(f"{name}: missing or not a file") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidModel(f"{name}: not a regular file")
        size = st.st_size
        if size < 8:
            raise InvalidModel(f"{name}: {size} bytes, shorter than the 8-byte header length")
        n = int.from_bytes(_pread_exact(fd, 8, 0), "little")
        if n == 0 or n > MAX_HEADER or 8 + n > size:
            raise InvalidModel(f"{name}: header length {n} does not fit a {size}-byte file")
        raw = _pread_exact(fd, n, 8)
    finally:
        os.close(fd)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are both ValueErrors
        raise InvalidModel(f"{name}: header is not valid UTF-8 JSON: {e}") from e
    if not isinstance(header, dict):
        raise InvalidModel(f"{name}: header is not a JSON object")
    return header, size - 8 - n


def _is_uint(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_metadata(name: str, meta: object) -> None:
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise InvalidModel(f"{name}: __metadata__ must map strings to strings")


def _tensor_span(name: str, tensor: str, info: object) -> _Span:
    if not isinstance(info, dict):
        raise InvalidModel(f"{name}: tensor {tensor!r} is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise InvalidModel(f"{name}: tensor {tensor!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
        raise InvalidModel(f"{name}: tensor {tensor!r} has invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_uint(o) for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise InvalidModel(f"{name}: tensor {tensor!r} has invalid data_offsets {offsets!r}")
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits % 8 or offsets[1] - offsets[0] != bits // 8:
        raise InvalidModel(
            f"{name}: tensor {tensor!r} {dtype}{shape} needs {bits / 8:g} bytes "
            f"but data_offsets {offsets} hold {offsets[1] - offsets[0]}"
        )
    return _Span(offsets[0], offsets[1], tensor)


def _check_tiling(name: str, spans: list[_Span], data_len: int) -> None:
    """The tensors must cover the data section exactly: no overlap, no gap, no slack at the end."""
    pos = 0
    for s in sorted(spans):
        if s.begin != pos:
            what = "overlaps the previous tensor" if s.begin < pos else "leaves a gap before it"
            raise InvalidModel(f"{name}: tensor {s.name!r} at offset {s.begin} {what} ({pos})")
        pos = s.end
    if pos != data_len:
        raise InvalidModel(
            f"{name}: tensors end at {pos} but the data section holds {data_len} bytes "
            f"({'truncated' if data_len < pos else 'padded'})"
        )


def safetensors_tensors(path: Path, name: str | None = None) -> frozenset[str]:
    """Validate a safetensors file from its header alone and return its tensor names."""
    name = name or path.name
    header, data_len = _read_header(path, name)
    spans: list[_Span] = []
    for key, info in header.items():
        if key == "__metadata__":
            _check_metadata(name, info)
        else:
            spans.append(_tensor_span(name, key, info))
    _check_tiling(name, spans, data_len)
    return frozenset(s.name for s in spans)


def check_safetensors(path: Path, name: str | None = None) -> None:
    """Raise InvalidModel unless `path` is well-formed safetensors; `name` is for messages."""
    safetensors_tensors(path, name)


# --- sharded checkpoints ---------------------------------------------------------------------


def _shard_name(index: str, shard: object) -> str:
    # Shards are siblings of the index; anything else could point a loader outside the model.
    p = PurePosixPath(shard) if isinstance(shard, str) else None
    if p is None or not shard or p.is_absolute() or ".." in p.parts or "\\" in str(shard):
        raise InvalidModel(f"{index}: weight_map names an unsafe shard path {shard!r}")
    return str(p)


def _load_index(path: Path, name: str) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (FileNotFoundError, IsADirectoryError) as e:
        raise InvalidModel(f"{name}: missing or not a file") from e
    except ValueError as e:
        raise InvalidModel(f"{name}: not valid UTF-8 JSON: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("weight_map"), dict):
        raise InvalidModel(f"{name}: no weight_map object")
    return doc["weight_map"]  # type: ignore[no-any-return]


def _check_one_index(model_dir: Path, rel: str) -> None:
    index = model_dir / rel
    weight_map = _load_index(index, rel)
    by_shard: dict[str, set[str]] = {}
    for tensor, shard in weight_map.items():
        by_shard.setdefault(_shard_name(rel, shard), set()).add(tensor)
    base = PurePosixPath(rel).parent
    for shard, wanted in sorted(by_shard.items()):
        shard_rel = str(base / shard)
        if not (model_dir / shard_rel).is_file():
            raise InvalidModel(f"{rel}: weight_map names shard {shard_rel} which is missing")
        absent = wanted - safetensors_tensors(model_dir / shard_rel, shard_rel)
        if absent:
            some = ", ".join(sorted(absent)[:3])
            raise InvalidModel(f"{rel}: {len(absent)} tensors not in {shard_rel}, e.g. {some}")


def check_index(model_dir: Path, files: Iterable[str] = ()) -> None:
    """Check every `*.safetensors.index.json` at the top of `model_dir` and any listed in `files`.

    Each shard the weight_map names must exist beside the index, be a valid safetensors file,
    and hold every tensor the weight_map assigns to it.
    """
    found = {p.name for p in model_dir.glob("*" + INDEX_SUFFIX) if p.is_file()}
    found.update(f for f in files if f.endswith(INDEX_SUFFIX))
    for rel in sorted(found):
        _check_one_index(model_dir, rel)


def check_model(model_dir: Path, files: Iterable[str]) -> None:
    """Check every listed `.safetensors` file (paths relative to `model_dir`), then the indexes."""
    files = list(files)
    for rel in files:
        if rel.endswith(".safetensors"):
            check_safetensors(model_dir / rel, rel)
    check_index(model_dir, files)


# --- S3 checksums ----------------------------------------------------------------------------


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


def _s3_hasher(algorithm: str) -> Any:
    return _Crc32() if algorithm == "crc32" else hashlib.new(algorithm)
