"""safetensors files and the shard indexes (`*.index.json`), checked from headers alone.

The checks read only the header (at most 100 MiB, usually a few KiB) and compare it with the
file size, never the weights: a truncated or padded shard is refused in milliseconds.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from fetcher.errors import InvalidModel
from fetcher.verify.formats import INDEX_SUFFIX, open_regular, read_weight_map

# Same limit spirit as the safetensors crate: a header is metadata, never a payload.
MAX_HEADER = 100 * 1024 * 1024
SAFETENSORS_INDEX = ".safetensors.index.json"

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
    with open_regular(path, name) as (fd, size):
        if size < 8:
            raise InvalidModel(f"{name}: {size} bytes, shorter than the 8-byte header length")
        n = int.from_bytes(_pread_exact(fd, 8, 0), "little")
        if n == 0 or n > MAX_HEADER or 8 + n > size:
            raise InvalidModel(f"{name}: header length {n} does not fit a {size}-byte file")
        raw = _pread_exact(fd, n, 8)
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


def _unused_alternative(model_dir: Path, rel: str, shards: Iterable[str]) -> bool:
    """A pickle index none of whose shards is here, beside safetensors weights: the copy in
    the other format that FETCH_EXCLUDE=*.bin left out, which loaders skip when safetensors
    are present (vLLM, transformers). One shard present but another missing is still broken."""
    base = model_dir / PurePosixPath(rel).parent
    if rel.endswith(SAFETENSORS_INDEX) or any((base / s).exists() for s in shards):
        return False
    return any(base.glob("*.safetensors"))


def _check_one_index(model_dir: Path, rel: str, skip: Collection[str]) -> None:
    by_shard = read_weight_map(model_dir / rel, rel) or {}
    if _unused_alternative(model_dir, rel, by_shard):
        return
    base = PurePosixPath(rel).parent
    for shard, wanted in sorted(by_shard.items()):
        shard_rel = str(base / shard)
        if not (model_dir / shard_rel).is_file():
            raise InvalidModel(f"{rel}: weight_map names shard {shard_rel} which is missing")
        if not shard_rel.endswith(".safetensors") or "safetensors" in skip:
            continue  # a pickle's tensor names are not readable without unpickling it
        absent = wanted - safetensors_tensors(model_dir / shard_rel, shard_rel)
        if absent:
            some = ", ".join(sorted(absent)[:3])
            raise InvalidModel(f"{rel}: {len(absent)} tensors not in {shard_rel}, e.g. {some}")


def check_index(model_dir: Path, files: Iterable[str] = (), skip: Collection[str] = ()) -> None:
    """Check every `*.index.json` at the top of `model_dir` and any listed in `files` (issue
    16: `pytorch_model.bin.index.json` too, as formats.read_weight_map reads them).

    Each shard the weight_map names must exist beside the index; a safetensors shard must be
    valid and hold every tensor the weight_map assigns to it.
    """
    found = {p.name for p in model_dir.glob("*" + INDEX_SUFFIX) if p.is_file()}
    found.update(f for f in files if f.endswith(INDEX_SUFFIX))
    for rel in sorted(found):
        _check_one_index(model_dir, rel, skip)
