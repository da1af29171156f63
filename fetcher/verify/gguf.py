"""GGUF headers (llama.cpp's model format), checked with bounded reads and `struct` (issue 16).

A GGUF file (ggml-org/ggml docs/gguf.md) is: magic `GGUF`, a uint32 version, uint64 tensor
and key-value counts, the key-values (string key, uint32 value type, value), one info record
per tensor (name, uint32 n_dims, uint64 dims, uint32 ggml type, uint64 offset), padding to
`general.alignment` (default 32), then the tensor data. Everything before the data is read;
the data never is: a header of a few MiB (a 128k-token vocabulary) costs milliseconds, however
large the file.

What is refused is what llama.cpp's own reader (ggml's gguf.cpp and the model loader) refuses
for a reason visible in the header: a bad magic or version, a record that runs past the end of
the file, an unknown value or tensor type, duplicate keys or tensor names, an alignment that is
not a power of two, tensors that do not follow each other at aligned offsets, a data section
shorter than its tensors (truncated) or longer than their alignment padding (padded), and a
split set whose name and `split.*` key-values disagree.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fetcher.errors import InvalidModel
from fetcher.verify.formats import open_regular

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # v1 (uint32 counts) is refused by llama.cpp since 2023
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME = 63  # GGML_MAX_NAME is 64 with the terminating NUL
# Sane bounds: far above any published model, far below what garbage decodes to.
MAX_TENSORS = 1 << 20
MAX_KEYS = 1 << 20
MAX_KEY_BYTES = 1 << 16
MAX_ARRAY_STRINGS = 1 << 24
MAX_KEPT_STRING = 1 << 20  # longer string values are skipped, not read (a chat template: ~10 KiB)
_WINDOW = 1 << 20  # header bytes read per pread
_INT64_MAX = (1 << 63) - 1

# ggml type id -> (name, elements per block, bytes per block), as ggml defines them. Ids left
# out (4, 5, 31-33, 36-38) were removed from ggml; llama.cpp refuses them too.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18),
}

# GGUF value types: id -> struct format of a scalar; 8 is a string, 9 an array.
STRING, ARRAY = 8, 9
_SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?",
                   10: "Q", 11: "q", 12: "d"}  # fmt: skip
_SCALARS = {t: struct.Struct("<" + f) for t, f in _SCALAR_FORMATS.items()}
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_COUNTS = struct.Struct("<IQQ")  # version, tensor count, key-value count
_TENSOR_TAIL = struct.Struct("<IQ")  # ggml type, offset
UINT16, INT32, UINT32 = 2, 5, 4

SPLIT_NAME = re.compile(r"(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf")
# llama.cpp reads these with a type check: another type is an error at load.
_SPLIT_KEYS = {"split.no": UINT16, "split.count": UINT16, "split.tensors.count": INT32}


@dataclass(frozen=True)
class ArrayValue:
    item_type: int
    count: int


@dataclass(frozen=True)
class SkippedString:
    """A string value longer than MAX_KEPT_STRING: its length, its bytes left unread."""

    length: int


Value = int | float | bool | str | ArrayValue | SkippedString


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: int
    dims: tuple[int, ...]  # ggml order: dims[0] is the row length
    offset: int  # from the start of the data section
    nbytes: int


@dataclass(frozen=True)
class Header:
    version: int
    alignment: int
    data_offset: int  # where the data section starts in the file
    types: dict[str, int]  # key -> GGUF value type
    values: dict[str, Value]
    tensors: tuple[TensorInfo, ...]
    file_size: int


class _Short(Exception):
    """A read past the end of the file; turned into 'truncated' with what was being read."""


class _Cursor:
    """Sequential little-endian reads from a file through one bounded window (os.pread)."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size
        self.buf, self.start, self.pos = b"", 0, 0

    def _fill(self, n: int) -> None:
        if self.pos + n > self.size:
            raise _Short
        self.buf = os.pread(self.fd, max(n, min(_WINDOW, self.size - self.pos)), self.pos)
        self.start = self.pos
        if len(self.buf) < n:  # the file shrank under us
            raise _Short

    def take(self, n: int) -> bytes:
        off = self.pos - self.start
        if off < 0 or off + n > len(self.buf):
            self._fill(n)
            off = 0
        self.pos += n
        return self.buf[off : off + n]

    def unpack(self, fmt: struct.Struct) -> tuple[int | float | bool, ...]:
        return fmt.unpack(self.take(fmt.size))

    def u32(self) -> int:
        return int(_U32.unpack(self.take(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack(self.take(8))[0])

    def skip(self, n: int) -> None:
        if self.pos + n > self.size:
            raise _Short
        self.pos += n

    def skip_strings(self, count: int) -> None:
        """Skip `count` length-prefixed strings: the hot loop of a vocabulary (400k strings for
        Llama 3's tokens and merges), one unpack and one addition per string. At the end of the
        window, unpack_from raises (the next length is not in it): read on from there."""
        unpack = _U64.unpack_from
        while count:
            buf, off, done = self.buf, self.pos - self.start, 0
            try:
                for done in range(count):  # noqa: B007 - `done` says how far we got
                    off += 8 + unpack(buf, off)[0]
                done = count
            except struct.error:
                pass
            self.pos, count = self.start + off, count - done
            if self.pos > self.size:
                raise _Short
            if count:
                self._fill(8)


def _pad(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


def _text(raw: bytes) -> str:
    # llama.cpp does not require UTF-8; surrogateescape keeps distinct bytes distinct.
    return raw.decode("utf-8", "surrogateescape")


def read_header(path: Path, name: str | None = None) -> Header:
    """Parse and check the header of a GGUF file; raise InvalidModel naming `name` and why."""
    name = name or path.name
    with open_regular(path, name) as (fd, size):
        return _Parse(_Cursor(fd, size), name).header()


class _Parse:
    def __init__(self, cur: _Cursor, name: str) -> None:
        self.cur, self.name = cur, name
        self.where = "the magic"  # what is being read, for the 'truncated' message

    def fail(self, what: str) -> InvalidModel:
        return InvalidModel(f"{self.name}: {what}")

    def header(self) -> Header:
        try:
            version, n_tensors, n_kv = self._preamble()
            types, values = self._key_values(n_kv)
            alignment = self._alignment(types, values)
            infos = self._tensor_infos(n_tensors)
        except _Short:
            size = self.cur.size
            raise self.fail(
                f"truncated: {self.where} runs past the end of the file ({size} bytes)"
            ) from None
        data_offset = _pad(self.cur.pos, alignment)
        tensors = self._layout(infos, alignment, data_offset)
        return Header(version, alignment, data_offset, types, values, tensors, self.cur.size)

    def _preamble(self) -> tuple[int, int, int]:
        size = self.cur.size
        head = os.pread(self.cur.fd, 4, 0)
        if len(head) < 4 and MAGIC.startswith(head):
            raise self.fail(f"truncated: {size} bytes, too short for a GGUF header")
        if head != MAGIC:
            html = head[:1] == b"<"
            hint = " (an HTML or XML page saved under the model's name?)" if html else ""
            raise self.fail(f"not a GGUF file: starts with {head!r}, not b'GGUF'{hint}")
        self.cur.skip(4)
        self.where = "the version and counts"
        version, n_tensors, n_kv = (int(v) for v in self.cur.unpack(_COUNTS))
        if version not in VERSIONS:
            raise self.fail(_version_problem(version))
        if n_tensors > MAX_TENSORS or n_kv > MAX_KEYS or 24 + 24 * n_tensors + 13 * n_kv > size:
            raise self.fail(
                f"header claims {n_tensors} tensors and {n_kv} key-values, more than "
                f"a {size}-byte file can hold"
            )
        return version, n_tensors, n_kv

    def _string(self, limit: int, what: str) -> str:
        n = self.cur.u64()
        if n > limit:
            raise self.fail(f"{what} is {n} bytes long (limit {limit})")
        return _text(self.cur.take(n))

    def _key_values(self, n_kv: int) -> tuple[dict[str, int], dict[str, Value]]:
        types: dict[str, int] = {}
        values: dict[str, Value] = {}
        for i in range(n_kv):
            self.where = f"key-value {i}"
            key = self._string(MAX_KEY_BYTES, f"key {i}")
            if key in types:
                raise self.fail(f"duplicate key {key!r}")
            self.where = f"key-value {i} ({key!r})"
            kind = self.cur.u32()
            types[key], values[key] = kind, self._value(key, kind)
        return types, values

    def _value(self, key: str, kind: int) -> Value:
        if kind in _SCALARS:
            return self.cur.unpack(_SCALARS[kind])[0]
        if kind == STRING:
            n = self.cur.u64()
            if n > MAX_KEPT_STRING:
                self.cur.skip(n)
                return SkippedString(n)
            return _text(self.cur.take(n))
        if kind == ARRAY:
            return self._array(key)
        raise self.fail(f"key {key!r} has unknown value type {kind}")

    def _array(self, key: str) -> ArrayValue:
        item, count = self.cur.u32(), self.cur.u64()
        if item in _SCALARS:
            self.cur.skip(count * _SCALARS[item].size)
        elif item == STRING:
            if count > MAX_ARRAY_STRINGS or 8 * count > self.cur.size - self.cur.pos:
                raise self.fail(f"key {key!r} claims {count} strings, more than the file holds")
            self.cur.skip_strings(count)
        elif item == ARRAY:
            raise self.fail(f"key {key!r} is an array of arrays, which llama.cpp cannot read")
        else:
            raise self.fail(f"key {key!r} is an array of unknown value type {item}")
        return ArrayValue(item, count)

    def _alignment(self, types: dict[str, int], values: dict[str, Value]) -> int:
        if "general.alignment" not in types:
            return DEFAULT_ALIGNMENT
        value = values["general.alignment"]
        if types["general.alignment"] != UINT32 or not isinstance(value, int):
            raise self.fail("general.alignment is not a uint32")
        if value <= 0 or value & (value - 1):
            raise self.fail(f"general.alignment {value} is not a power of two")
        return value

    def _tensor_infos(self, n_tensors: int) -> list[tuple[str, tuple[int, ...], int, int]]:
        infos = []
        seen: set[str] = set()
        for i in range(n_tensors):
            self.where = f"tensor info {i}"
            tname = self._string(1 << 16, f"tensor {i}'s name")
            if len(tname.encode("utf-8", "surrogateescape")) > MAX_NAME:
                raise self.fail(f"tensor {i}'s name {tname[:80]!r} is longer than {MAX_NAME} bytes")
            if tname in seen:
                raise self.fail(f"duplicate tensor name {tname!r}")
            seen.add(tname)
            self.where = f"tensor info {i} ({tname!r})"
            n_dims = self.cur.u32()
            if n_dims > MAX_DIMS:
                raise self.fail(f"tensor {tname!r} has {n_dims} dimensions (at most {MAX_DIMS})")
            dims = struct.unpack(f"<{n_dims}Q", self.cur.take(8 * n_dims))
            ggml_type, offset = (int(v) for v in self.cur.unpack(_TENSOR_TAIL))
            infos.append((tname, dims, ggml_type, offset))
        return infos

    def _layout(
        self, infos: list[tuple[str, tuple[int, ...], int, int]], alignment: int, data_offset: int
    ) -> tuple[TensorInfo, ...]:
        """Each tensor where llama.cpp expects it: right after the previous one, padded."""
        tensors, expected, end = [], 0, self.cur.pos
        for tname, dims, ggml_type, offset in infos:
            nbytes = self._nbytes(tname, dims, ggml_type)
            if offset != expected:
                raise self.fail(
                    f"tensor {tname!r} is at data offset {offset}, expected {expected} "
                    f"(tensors follow each other, each padded to {alignment} bytes)"
                )
            tensors.append(TensorInfo(tname, ggml_type, dims, offset, nbytes))
            end = data_offset + offset + nbytes
            expected = offset + _pad(nbytes, alignment)
        self._check_size(tensors, end, data_offset + expected)
        return tuple(tensors)

    def _nbytes(self, tname: str, dims: tuple[int, ...], ggml_type: int) -> int:
        if ggml_type not in GGML_TYPES:
            raise self.fail(
                f"tensor {tname!r} has unknown ggml type {ggml_type} (if your llama.cpp reads "
                "it, set FETCH_SKIP_FORMAT_CHECKS=gguf)"
            )
        type_name, block, block_bytes = GGML_TYPES[ggml_type]
        elements = 1
        for d in dims:
            elements *= d
        if any(d > _INT64_MAX for d in dims) or elements >= _INT64_MAX:
            raise self.fail(f"tensor {tname!r} has impossible dimensions {list(dims)}")
        if dims and dims[0] % block:
            raise self.fail(
                f"tensor {tname!r} {type_name}{list(dims)}: rows of {dims[0]} elements are not "
                f"whole blocks of {block}"
            )
        return elements // block * block_bytes

    def _check_size(self, tensors: list[TensorInfo], end: int, padded_end: int) -> None:
        size = self.cur.size
        if size < end:
            last = tensors[-1].name
            raise self.fail(
                f"truncated: tensor {last!r} ends at byte {end} but the file has {size} bytes"
            )
        if size > padded_end:
            raise self.fail(
                f"padded: the tensors and their alignment end by byte {padded_end} but the "
                f"file has {size} bytes ({size - padded_end} too many)"
            )


def _version_problem(version: int) -> str:
    if version and not version & 0xFFFF:
        return (
            f"GGUF version field {version:#010x} is byte-swapped: a big-endian file, which "
            "llama.cpp on a little-endian host cannot load"
        )
    if version == 1:
        return "GGUF version 1, which llama.cpp no longer reads (2 or 3 expected)"
    return f"unsupported GGUF version {version} (2 or 3 expected)"


# --- split sets ------------------------------------------------------------------------------


def check_split_keys(name: str, header: Header) -> None:
    """A split's `split.*` key-values agree with its file name (llama.cpp finds the other
    splits from the first one's name and `split.count`)."""
    for key, kind in _SPLIT_KEYS.items():
        if key in header.types and header.types[key] != kind:
            raise InvalidModel(f"{name}: {key} has value type {header.types[key]}, not {kind}")
    count, no = header.values.get("split.count"), header.values.get("split.no")
    match = SPLIT_NAME.fullmatch(PurePosixPath(name).name)
    if match is None:
        if isinstance(count, int) and count > 1:
            raise InvalidModel(
                f"{name}: split.count is {count} but the name is not <name>-00001-of-"
                f"{count:05d}.gguf, so llama.cpp cannot find the other splits"
            )
        return
    n, total = int(match["no"]), int(match["count"])
    if count is not None and count != total:
        raise InvalidModel(f"{name}: split.count is {count}, the name says {total}")
    if no is not None and no != n - 1:
        raise InvalidModel(f"{name}: split.no is {no}, the name says split {n} (split.no {n - 1})")


def split_sets(rels: Iterable[str]) -> dict[tuple[str, int], dict[int, str]]:
    """(directory/stem, count) -> {split number: rel} of every file named like a split."""
    sets: dict[tuple[str, int], dict[int, str]] = {}
    for rel in rels:
        p = PurePosixPath(rel)
        match = SPLIT_NAME.fullmatch(p.name)
        if match is not None:
            key = (str(p.parent / match["stem"]), int(match["count"]))
            sets.setdefault(key, {})[int(match["no"])] = rel
    return sets


def check_split_names(rels: Iterable[str]) -> None:
    """Every split set named `<name>-%05d-of-%05d.gguf` is whole and agrees on its count."""
    sets = split_sets(rels)
    counts: dict[str, set[int]] = {}
    for stem, total in sets:
        counts.setdefault(stem, set()).add(total)
    for stem, totals in sorted(counts.items()):
        if len(totals) > 1:
            listed = " and ".join(str(t) for t in sorted(totals))
            raise InvalidModel(f"{stem}-*.gguf: splits disagree on the split count ({listed})")
    for (stem, total), members in sorted(sets.items()):
        bad = sorted(n for n in members if not 1 <= n <= total)
        if bad:
            raise InvalidModel(f"{members[bad[0]]}: not a split number of 1..{total}")
        missing = [n for n in range(1, total + 1) if n not in members]
        if missing:
            names = ", ".join(f"{PurePosixPath(stem).name}-{n:05d}-of-{total:05d}.gguf"
                              for n in missing[:3])  # fmt: skip
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise InvalidModel(f"{stem}: split set of {total} is missing {names}{more}")


def check_gguf_files(model_dir: Path, rels: Iterable[str]) -> None:
    """Check every listed `.gguf` (paths relative to `model_dir`) and their split sets."""
    rels = sorted(rels)
    headers = {rel: read_header(model_dir / rel, rel) for rel in rels}
    for rel, header in headers.items():
        check_split_keys(rel, header)
    check_split_names(rels)
    for members in split_sets(rels).values():
        first = headers[members[1]]
        want = first.values.get("split.tensors.count")
        have = sum(len(headers[rel].tensors) for rel in members.values())
        if isinstance(want, int) and want != have:
            raise InvalidModel(
                f"{members[1]}: split.tensors.count is {want} but the splits hold {have} tensors"
            )
