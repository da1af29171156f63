"""fetcher.verify: hashes against xxhash on the same bytes, safetensors and index checks."""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xxhash
from safetensors.numpy import save_file

from devtools.sample_model import write_sample_model
from fetcher.errors import CacheError, InvalidModel
from fetcher.verify import hashes as verify
from fetcher.verify.checks import check_model
from fetcher.verify.hashes import part_hashes, xxh3_file, xxh3_range
from fetcher.verify.safetensors import check_index, check_safetensors, safetensors_tensors


def h(data: bytes) -> str:
    return str(xxhash.xxh3_128_hexdigest(data))


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- hashing ---------------------------------------------------------------------------------

BLOCK = 4096
PART = 10_000  # deliberately not a multiple of BLOCK: parts start and end mid-block


@pytest.fixture
def small_block(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "HASH_BLOCK", BLOCK)


@pytest.mark.usefixtures("small_block")
@pytest.mark.parametrize(
    "size",
    [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, PART - 1, PART, PART + 1, 3 * PART, 7 * PART + 123],
)
def test_hashes_match_xxhash_on_the_bytes(tmp_path: Path, size: int) -> None:
    data = random.Random(size).randbytes(size)
    path = write(tmp_path / "f", data)

    whole, parts = part_hashes(path, PART)

    assert xxh3_file(path) == whole == h(data)
    assert parts == [h(data[i : i + PART]) for i in range(0, size, PART)]
    assert len(parts) == -(-size // PART)  # zero bytes, zero parts


@pytest.mark.usefixtures("small_block")
@pytest.mark.parametrize("part", [1, 7, BLOCK // 2, BLOCK, 3 * BLOCK + 5])
def test_part_hashes_with_parts_smaller_and_larger_than_a_block(tmp_path: Path, part: int) -> None:
    data = random.Random(part).randbytes(5 * BLOCK + 17)
    whole, parts = part_hashes(write(tmp_path / "f", data), part)
    assert whole == h(data)
    assert parts == [h(data[i : i + part]) for i in range(0, len(data), part)]


def test_part_hashes_refuses_a_zero_part_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        part_hashes(write(tmp_path / "f", b"x"), 0)


@pytest.mark.usefixtures("small_block")
@pytest.mark.parametrize(
    ("offset", "length"), [(0, 0), (0, 1), (5, BLOCK), (BLOCK - 3, 2 * BLOCK + 9), (0, 30_000)]
)
@pytest.mark.parametrize("buf_size", [None, 1000, BLOCK])
def test_xxh3_range(tmp_path: Path, offset: int, length: int, buf_size: int | None) -> None:
    data = random.Random(1).randbytes(30_000)
    fd = os.open(write(tmp_path / "f", data), os.O_RDONLY)
    try:
        buf = bytearray(buf_size) if buf_size else None
        assert xxh3_range(fd, offset, length, buf) == h(data[offset : offset + length])
    finally:
        os.close(fd)


def test_xxh3_range_past_the_end_is_an_error(tmp_path: Path) -> None:
    fd = os.open(write(tmp_path / "f", b"0123456789"), os.O_RDONLY)
    try:
        with pytest.raises(CacheError):
            xxh3_range(fd, 5, 6)
    finally:
        os.close(fd)


# --- safetensors: accepted -------------------------------------------------------------------


def real_file(path: Path) -> Path:
    """A file written by the safetensors library itself."""
    tensors = {
        "a.f32": np.arange(12, dtype=np.float32).reshape(3, 4),
        "b.f16": np.ones((5,), dtype=np.float16),
        "c.i64": np.arange(3, dtype=np.int64),
        "d.u8": np.zeros((2, 3, 1), dtype=np.uint8),
        "e.bool": np.array([True, False, True]),
        "f.empty": np.zeros((0,), dtype=np.float32),
        "g.scalar": np.array(3.5, dtype=np.float64),
    }
    save_file(tensors, str(path), metadata={"format": "np", "note": "test"})
    return path


def test_accepts_a_file_written_by_safetensors(tmp_path: Path) -> None:
    path = real_file(tmp_path / "real.safetensors")
    check_safetensors(path)
    assert safetensors_tensors(path) == {
        "a.f32",
        "b.f16",
        "c.i64",
        "d.u8",
        "e.bool",
        "f.empty",
        "g.scalar",
    }


def test_accepts_the_sample_model(tmp_path: Path) -> None:
    files = write_sample_model(tmp_path, 200_000, shards=2)
    shards = [p for p in files if p.suffix == ".safetensors"]
    assert len(shards) == 2
    for p in shards:
        check_safetensors(p)
    check_model(tmp_path, [p.name for p in files])


def header_file(path: Path, header: Any, data: bytes = b"", n: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return write(path, (len(raw) if n is None else n).to_bytes(8, "little") + raw + data)


def test_accepts_sub_byte_dtypes_and_no_tensors(tmp_path: Path) -> None:
    f4 = {"x": {"dtype": "F4", "shape": [2, 3], "data_offsets": [0, 3]}}
    check_safetensors(header_file(tmp_path / "f4.safetensors", f4, b"abc"))
    check_safetensors(header_file(tmp_path / "none.safetensors", {"__metadata__": {}}))


# --- safetensors: refused --------------------------------------------------------------------


def refuse(path: Path, why: str) -> None:
    with pytest.raises(InvalidModel, match=why) as info:
        check_safetensors(path)
    assert path.name in str(info.value)


def test_refuses_a_file_truncated_by_one_byte(tmp_path: Path) -> None:
    path = real_file(tmp_path / "cut.safetensors")
    os.truncate(path, path.stat().st_size - 1)
    refuse(path, "truncated")


def test_refuses_a_file_padded_by_one_byte(tmp_path: Path) -> None:
    path = real_file(tmp_path / "pad.safetensors")
    with open(path, "ab") as f:
        f.write(b"\0")
    refuse(path, "padded")


def test_refuses_a_sample_shard_truncated_at_the_end(tmp_path: Path) -> None:
    shard = write_sample_model(tmp_path, 50_000, shards=1)[2]
    os.truncate(shard, shard.stat().st_size - 1)
    refuse(shard, "truncated")


@pytest.mark.parametrize("size", [0, 1, 7])
def test_refuses_a_file_shorter_than_eight_bytes(tmp_path: Path, size: int) -> None:
    refuse(write(tmp_path / "tiny.safetensors", b"\1" * size), "shorter than")


@pytest.mark.parametrize("n", [0, 1000, 101 * 1024 * 1024, 2**64 - 1])
def test_refuses_a_header_length_that_does_not_fit(tmp_path: Path, n: int) -> None:
    refuse(header_file(tmp_path / "len.safetensors", {}, b"x" * 100, n=n), "header length")


@pytest.mark.parametrize(
    "raw", [b"not json at all ", b'{"a": 1', b"\xff\xfe{}    ", b'{"a":1,"a":2}   ']
)
def test_refuses_a_header_that_is_not_json(tmp_path: Path, raw: bytes) -> None:
    refuse(header_file(tmp_path / "json.safetensors", raw), "not valid UTF-8 JSON")


def test_refuses_a_header_that_is_not_an_object(tmp_path: Path) -> None:
    refuse(header_file(tmp_path / "list.safetensors", [1, 2]), "not a JSON object")


def t(dtype: str, shape: list[Any], begin: int, end: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


@pytest.mark.parametrize(
    ("header", "data_len", "why"),
    [
        ({"a": t("U8", [4], 0, 4), "b": t("U8", [4], 2, 6)}, 6, "overlaps"),
        ({"a": t("U8", [4], 0, 4), "b": t("U8", [4], 5, 9)}, 9, "gap"),
        ({"a": t("U8", [4], 1, 5)}, 5, "gap"),
        ({"a": t("F32", [2, 2], 0, 8)}, 8, "needs 16 bytes"),
        ({"a": t("F4", [3], 0, 2)}, 2, "needs 1.5 bytes"),
        ({"a": t("Q4", [4], 0, 4)}, 4, "unknown dtype"),
        ({"a": {"shape": [4], "data_offsets": [0, 4]}}, 4, "unknown dtype"),
        ({"a": t("U8", [-4], 0, 4)}, 4, "invalid shape"),
        ({"a": t("U8", [True], 0, 1)}, 1, "invalid shape"),
        ({"a": t("U8", "4", 0, 4)}, 4, "invalid shape"),
        ({"a": t("U8", [4], 4, 0)}, 4, "invalid data_offsets"),
        ({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0]}}, 1, "invalid data_offsets"),
        ({"a": [1]}, 0, "not an object"),
        ({"__metadata__": {"k": 1}}, 0, "__metadata__"),
        ({"__metadata__": ["x"]}, 0, "__metadata__"),
    ],
)
def test_refuses_inconsistent_tensor_entries(
    tmp_path: Path, header: dict[str, Any], data_len: int, why: str
) -> None:
    refuse(header_file(tmp_path / "bad.safetensors", header, b"\7" * data_len), why)


def test_a_missing_file_is_an_invalid_model(tmp_path: Path) -> None:
    refuse(tmp_path / "gone.safetensors", "missing")


def test_reads_the_header_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A sparse 2 GiB shard: reading its weights would show up as gigabytes in the counters.
    size = 2 << 30
    path = header_file(tmp_path / "big.safetensors", {"w": t("U8", [size], 0, size)})
    os.truncate(path, path.stat().st_size + size)
    asked: list[int] = []
    real_pread = os.pread

    def counting_pread(fd: int, n: int, offset: int) -> bytes:
        asked.append(n)
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", counting_pread)
    before = _bytes_read()
    check_safetensors(path)
    after = _bytes_read()
    assert sum(asked) < 1024
    if before is not None and after is not None:  # Linux: every read syscall, whatever the API
        assert after - before < 1 << 20


def _bytes_read() -> int | None:
    try:
        text = Path("/proc/self/io").read_text()
    except OSError:
        return None
    return int(text.split("rchar:")[1].split()[0])


# --- index -----------------------------------------------------------------------------------


@pytest.fixture
def model(tmp_path: Path) -> Path:
    write_sample_model(tmp_path / "model", 100_000, shards=3)
    return tmp_path / "model"


def rewrite_index(model: Path, edit: Any) -> None:
    path = model / "model.safetensors.index.json"
    doc = json.loads(path.read_text())
    edit(doc["weight_map"])
    path.write_text(json.dumps(doc))


def test_a_good_index_passes(model: Path) -> None:
    check_index(model)
    check_model(model, sorted(p.name for p in model.iterdir()))


def test_refuses_an_index_naming_a_missing_shard(model: Path) -> None:
    (model / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(InvalidModel, match=re.escape("model-00002-of-00003.safetensors")) as info:
        check_index(model)
    assert "missing" in str(info.value)


def test_refuses_a_tensor_that_is_not_in_its_shard(model: Path) -> None:
    rewrite_index(model, lambda wm: wm.update({"model.ghost.weight": wm["lm_head.weight"]}))
    with pytest.raises(InvalidModel, match=r"not in model-00003-of-00003\.safetensors"):
        check_index(model)


def test_refuses_a_tensor_mapped_to_the_wrong_shard(model: Path) -> None:
    rewrite_index(
        model, lambda wm: wm.update({"lm_head.weight": "model-00001-of-00003.safetensors"})
    )
    with pytest.raises(InvalidModel, match=re.escape("lm_head.weight")):
        check_index(model)


@pytest.mark.parametrize("shard", ["../x.safetensors", "/etc/x.safetensors", "a/../../x", "", 3])
def test_refuses_unsafe_shard_names(model: Path, shard: Any) -> None:
    (model.parent / "x.safetensors").write_bytes(
        (model / "model-00001-of-00003.safetensors").read_bytes()
    )
    rewrite_index(model, lambda wm: wm.update({"model.embed_tokens.weight": shard}))
    with pytest.raises(InvalidModel, match="unsafe shard path"):
        check_index(model)


def test_refuses_an_invalid_shard_through_the_index(model: Path) -> None:
    shard = model / "model-00001-of-00003.safetensors"
    os.truncate(shard, shard.stat().st_size - 1)
    with pytest.raises(InvalidModel, match=r"model-00001-of-00003\.safetensors: .*truncated"):
        check_index(model)


def test_checks_other_index_names_and_indexes_in_subdirectories(model: Path) -> None:
    sub = model / "unet"
    sub.mkdir()
    (sub / "diffusion.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "diffusion-00001.safetensors"}})
    )
    check_index(model)  # only the top level is globbed
    with pytest.raises(
        InvalidModel, match=re.escape("unet/diffusion-00001.safetensors which is missing")
    ):
        check_index(model, ["unet/diffusion.safetensors.index.json"])
    (model / "adapter.safetensors.index.json").write_text("{}")
    with pytest.raises(
        InvalidModel, match=re.escape("adapter.safetensors.index.json: no weight_map")
    ):
        check_index(model)


def test_check_model_names_the_relative_path(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "w.safetensors", b"short")
    write(tmp_path / "README.md", b"not checked")
    with pytest.raises(InvalidModel, match=re.escape("sub/w.safetensors")):
        check_model(tmp_path, ["README.md", "sub/w.safetensors"])
