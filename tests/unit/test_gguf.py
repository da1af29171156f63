"""fetcher.verify.gguf against llama.cpp's reference `gguf` package (issue 16).

Valid files are written by `gguf.GGUFWriter` and read by both `gguf.GGUFReader` and our
reader, which must agree on every key, value type, scalar value, array length and tensor.
Invalid ones are valid files damaged the ways files are damaged in the field (cut short, an
HTML page under the name, padding, a split missing), or headers built byte by byte for what
the writer refuses to write (duplicate keys, unknown types).
"""

from __future__ import annotations

import re
import shutil
import struct
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from devtools.gguf_bench import Shape, measure, write_sparse
from devtools.sample_gguf import TYPES, write_gguf
from fetcher.errors import EXIT_INTEGRITY, InvalidModel
from fetcher.verify.gguf import (
    ArrayValue,
    Header,
    SkippedString,
    check_gguf_files,
    check_split_names,
    read_header,
)

# --- agreement with gguf.GGUFReader ----------------------------------------------------------


def reference_view(path: Path) -> dict[str, Any]:
    r = gguf.GGUFReader(path)
    fields: dict[str, Any] = {}
    for key, field in r.fields.items():
        if key.startswith("GGUF."):
            continue
        kind = int(field.types[0])
        if kind == gguf.GGUFValueType.ARRAY:
            fields[key] = (kind, (int(field.types[-1]), len(field.data)))
        else:
            fields[key] = (kind, field.contents())
    tensors = [
        (t.name, int(t.tensor_type), [int(d) for d in t.shape], t.data_offset, t.n_bytes)
        for t in r.tensors
    ]
    version = int(r.fields["GGUF.version"].contents())
    return {"version": version, "alignment": int(r.alignment), "data_offset": r.data_offset,
            "fields": fields, "tensors": tensors}  # fmt: skip


def our_view(h: Header) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key, kind in h.types.items():
        value = h.values[key]
        fields[key] = (
            kind,
            (value.item_type, value.count) if isinstance(value, ArrayValue) else value,
        )
    tensors = [
        (t.name, t.ggml_type, list(t.dims), h.data_offset + t.offset, t.nbytes) for t in h.tensors
    ]
    return {"version": h.version, "alignment": h.alignment, "data_offset": h.data_offset,
            "fields": fields, "tensors": tensors}  # fmt: skip


def assert_agrees(path: Path) -> Header:
    header = read_header(path)
    ours, theirs = our_view(header), reference_view(path)
    # float32 values: the reference returns the float32 widened, as struct does.
    assert ours == theirs
    return header


@pytest.mark.parametrize("kind", TYPES)
def test_one_tensor_type_agrees_with_the_reference_reader(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"m-{kind}.gguf"
    write_gguf(path, types=[kind], rows=3)
    header = assert_agrees(path)
    assert {t.ggml_type for t in header.tensors} >= {int(gguf.GGMLQuantizationType[kind])}


def test_every_type_together_agrees_with_the_reference_reader(tmp_path: Path) -> None:
    path = tmp_path / "all.gguf"
    write_gguf(path, types=[*TYPES, *TYPES[::-1]], rows=5, vocab=3000)
    header = assert_agrees(path)
    assert len(header.tensors) == 2 * len(TYPES) + 1
    assert header.values["tokenizer.ggml.tokens"] == ArrayValue(8, 3000)


def test_custom_alignment_agrees_with_the_reference_reader(tmp_path: Path) -> None:
    path = tmp_path / "a64.gguf"
    write_gguf(path, alignment=64)
    header = assert_agrees(path)
    assert header.alignment == 64 and header.data_offset % 64 == 0


def test_vocabulary_larger_than_the_read_window_agrees(tmp_path: Path) -> None:
    """~1.5 MiB of token strings and scores: the header is read through two windows."""
    path = tmp_path / "vocab.gguf"
    write_gguf(path, vocab=60_000, types=["Q8_0"])
    header = assert_agrees(path)
    assert header.data_offset > 1 << 20


def test_split_set_agrees_and_is_accepted(tmp_path: Path) -> None:
    written = write_gguf(tmp_path / "m.gguf", split_max_tensors=2)
    assert [p.name for p in written] == [f"m-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    for p in written:
        assert_agrees(p)
    check_gguf_files(tmp_path, [p.name for p in written])


def test_model_without_tensors_agrees(tmp_path: Path) -> None:
    """Vocabulary-only GGUFs (llama.cpp's ggml-vocab-*.gguf) have no data section."""
    path = tmp_path / "vocab-only.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_token_list(["a", "b"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert assert_agrees(path).tensors == ()


def test_last_tensor_without_its_padding_is_accepted(tmp_path: Path) -> None:
    """llama.cpp checks each tensor's end against the file size, not the last padding."""
    path = tmp_path / "odd.gguf"
    write_gguf(path, types=["Q8_0"], rows=1)  # 272 bytes per row: not a multiple of 32
    header = read_header(path)
    q8 = header.tensors[0]
    last = header.tensors[-1]
    assert q8.nbytes % 32 and last.nbytes % 32 == 0
    # Move the Q8_0 tensor last: rewrite as a file whose final tensor ends unaligned.
    w = gguf.GGUFWriter(path, "llama")
    w.add_tensor("norm", np.ones(32, dtype=np.float32))
    w.add_tensor("q", np.zeros((1, 272), dtype=np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    h = read_header(path)
    end = h.data_offset + h.tensors[-1].offset + h.tensors[-1].nbytes
    assert path.stat().st_size > end
    with open(path, "r+b") as f:
        f.truncate(end)
    read_header(path)
    with open(path, "r+b") as f:
        f.truncate(end - 1)
    with pytest.raises(InvalidModel, match="truncated"):
        read_header(path)


# --- damaged files ---------------------------------------------------------------------------


@pytest.fixture
def valid(tmp_path: Path) -> Path:
    path = tmp_path / "model.Q4_K_M.gguf"
    write_gguf(path, rows=16)
    return path


def refused(path: Path, *words: str) -> str:
    with pytest.raises(InvalidModel) as caught:
        read_header(path, path.name)
    message = str(caught.value)
    assert caught.value.exit_code == EXIT_INTEGRITY
    assert path.name in message, message
    for word in words:
        assert word in message, message
    return message


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_data_is_refused(valid: Path, keep: float) -> None:
    size = valid.stat().st_size
    with open(valid, "r+b") as f:
        f.truncate(int(size * keep))
    refused(valid, "truncated", "ends at byte")


def test_truncated_inside_the_header_is_refused(valid: Path) -> None:
    with open(valid, "r+b") as f:
        f.truncate(300)
    refused(valid, "truncated", "runs past the end of the file (300 bytes)")


@pytest.mark.parametrize("size", [0, 3])
def test_too_short_for_a_header_is_refused(valid: Path, size: int) -> None:
    with open(valid, "r+b") as f:
        f.truncate(size)
    refused(valid, "truncated")


def test_html_error_page_is_refused(tmp_path: Path) -> None:
    page = tmp_path / "llama-3-8b.Q4_K_M.gguf"
    page.write_text("<html><body><h1>503 Service Unavailable</h1></body></html>\n")
    refused(page, "not a GGUF file", "HTML")


def test_bad_magic_is_refused(valid: Path) -> None:
    patch(valid, 0, b"GGML")
    refused(valid, "not a GGUF file", "b'GGML'")


@pytest.mark.parametrize(
    ("version", "words"),
    [
        (1, ("version 1", "no longer")),
        (4, ("unsupported GGUF version 4",)),
        (0x03000000, ("byte-swapped", "big-endian")),
    ],
)
def test_bad_version_is_refused(valid: Path, version: int, words: tuple[str, ...]) -> None:
    patch(valid, 4, struct.pack("<I", version))
    refused(valid, *words)


def test_padding_beyond_the_alignment_slack_is_refused(valid: Path) -> None:
    with open(valid, "ab") as f:
        f.write(b"\0" * 32)
    refused(valid, "padded", "32 too many")


def tensor_offset_field(path: Path, index: int) -> int:
    """File position of tensor `index`'s data offset, as the reference reader parsed it."""
    field = gguf.GGUFReader(path).tensors[index].field
    return field.offset + sum(int(p.nbytes) for p in field.parts[:5])


def test_tensor_outside_the_data_section_is_refused(valid: Path) -> None:
    pos = tensor_offset_field(valid, -1)
    patch(valid, pos, struct.pack("<Q", 1 << 40))
    refused(valid, "is at data offset 1099511627776, expected")


def test_overlapping_tensor_is_refused(valid: Path) -> None:
    patch(valid, tensor_offset_field(valid, 1), struct.pack("<Q", 0))
    refused(valid, "is at data offset 0, expected")


def test_huge_counts_are_refused_without_reading_on(valid: Path) -> None:
    patch(valid, 8, struct.pack("<QQ", 1 << 40, 7))
    refused(valid, "claims 1099511627776 tensors")


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


# --- headers built by hand: what GGUFWriter will not write -----------------------------------


def gstr(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def kv_u32(key: str, value: int) -> bytes:
    return gstr(key) + struct.pack("<II", 4, value)


def tensor(name: str, dims: tuple[int, ...], ggml_type: int, offset: int) -> bytes:
    packed = struct.pack(f"<I{len(dims)}Q", len(dims), *dims)
    return gstr(name) + packed + struct.pack("<IQ", ggml_type, offset)


def hand_made(path: Path, kvs: list[bytes], tensors: list[bytes], data: int = 0) -> Path:
    body = struct.pack("<4sIQQ", b"GGUF", 3, len(tensors), len(kvs)) + b"".join(kvs + tensors)
    body += b"\0" * (-len(body) % 32) + b"\0" * data
    path.write_bytes(body)
    return path


def test_hand_made_file_is_read_like_the_reference(tmp_path: Path) -> None:
    path = hand_made(tmp_path / "h.gguf", [kv_u32("a.b", 7)], [tensor("t", (8, 2), 0, 0)], 64)
    assert_agrees(path)


@pytest.mark.parametrize(
    ("kvs", "tensors", "words"),
    [
        ([kv_u32("k", 1), kv_u32("k", 2)], [], "duplicate key 'k'"),
        ([gstr("k") + struct.pack("<I", 13)], [], "unknown value type 13"),
        ([gstr("k") + struct.pack("<IIQ", 9, 9, 1)], [], "array of arrays"),
        ([kv_u32("general.alignment", 48)], [], "48 is not a power of two"),
        ([gstr("general.alignment") + struct.pack("<IQ", 10, 32)], [], "not a uint32"),
        ([], [tensor("t", (32,), 4, 0)], "unknown ggml type 4"),
        ([], [tensor("t", (1, 1, 1, 1, 1), 0, 0)], "5 dimensions"),
        ([], [tensor("t", (33,), 8, 0)], "not whole blocks of 32"),
        ([], [tensor("t", (8,), 0, 0), tensor("t", (8,), 0, 32)], "duplicate tensor name"),
        ([], [tensor("x" * 64, (8,), 0, 0)], "longer than 63 bytes"),
    ],
)
def test_hand_made_header_is_refused(
    tmp_path: Path, kvs: list[bytes], tensors: list[bytes], words: str
) -> None:
    path = hand_made(tmp_path / "bad.gguf", kvs, tensors, data=64)
    refused(path, words)


# --- split sets ------------------------------------------------------------------------------


@pytest.fixture
def split_dir(tmp_path: Path) -> Path:
    write_gguf(tmp_path / "m" / "llama.gguf", split_max_tensors=2)
    return tmp_path / "m"


def names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_missing_split_is_refused(split_dir: Path) -> None:
    (split_dir / "llama-00002-of-00003.gguf").unlink()
    with pytest.raises(InvalidModel, match=re.escape("missing llama-00002-of-00003.gguf")):
        check_gguf_files(split_dir, names(split_dir))
    with pytest.raises(InvalidModel, match=re.escape("missing llama-00002-of-00003.gguf")):
        check_split_names(names(split_dir))


def test_splits_in_a_folder_are_named_with_it(split_dir: Path) -> None:
    rels = [f"q4/{n}" for n in names(split_dir) if "00003" not in n.split("-of-")[0]]
    with pytest.raises(InvalidModel, match="q4/llama: split set of 3 is missing"):
        check_split_names(rels)


def test_split_numbers_swapped_are_refused(split_dir: Path) -> None:
    two, three = split_dir / "llama-00002-of-00003.gguf", split_dir / "llama-00003-of-00003.gguf"
    tmp = split_dir / "swap"
    two.rename(tmp)
    three.rename(two)
    tmp.rename(three)
    with pytest.raises(InvalidModel, match=re.escape("split.no is 2, the name says split 2")):
        check_gguf_files(split_dir, names(split_dir))


def test_split_counts_that_disagree_are_refused(split_dir: Path) -> None:
    shutil.copy(split_dir / "llama-00001-of-00003.gguf", split_dir / "llama-00001-of-00002.gguf")
    with pytest.raises(InvalidModel, match="disagree on the split count"):
        check_split_names(names(split_dir))


def test_first_split_renamed_as_a_single_file_is_refused(split_dir: Path) -> None:
    (split_dir / "llama-00001-of-00003.gguf").rename(split_dir / "llama.gguf")
    with pytest.raises(InvalidModel, match=re.escape("split.count is 3 but the name is not")):
        read_and_check(split_dir / "llama.gguf")


def read_and_check(path: Path) -> None:
    check_gguf_files(path.parent, [path.name])


def test_split_tensor_count_must_match_the_splits(split_dir: Path) -> None:
    """split.tensors.count (in the first split) counts the tensors of the whole set."""
    first = split_dir / "llama-00001-of-00003.gguf"
    field = gguf.GGUFReader(first).fields["split.tensors.count"]
    patch(first, field.offset + sum(int(p.nbytes) for p in field.parts[:3]), struct.pack("<i", 9))
    with pytest.raises(
        InvalidModel, match=re.escape("split.tensors.count is 9 but the splits hold 5")
    ):
        check_gguf_files(split_dir, names(split_dir))


def test_strings_longer_than_the_read_window_are_skipped_unread(tmp_path: Path) -> None:
    path = tmp_path / "long.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_array("tokenizer.ggml.tokens", ["a", "b" * (3 << 20), "c"])
    w.add_string("tokenizer.chat_template", "{{ x }}" * (300 << 10))
    w.add_tensor("t", np.ones(64, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    header = read_header(path)
    reference = gguf.GGUFReader(path)
    assert header.values["tokenizer.ggml.tokens"] == ArrayValue(8, 3)
    template = header.values["tokenizer.chat_template"]
    assert template == SkippedString(len(reference.fields["tokenizer.chat_template"].contents()))
    assert header.data_offset == reference.data_offset
    assert [t.name for t in header.tensors] == ["t"]


def test_header_bench_writes_files_the_reader_accepts(tmp_path: Path) -> None:
    """`make bench-gguf`'s sparse files, small: the measurement keeps measuring a valid file."""
    path = tmp_path / "sparse.gguf"
    write_sparse(path, Shape("tiny", tokens=100, merges=50, tensors=3), 1 << 20)
    header = assert_agrees(path)
    assert len(header.tensors) == 3 and header.values["tokenizer.ggml.merges"] == ArrayValue(8, 50)
    assert len(measure(path, runs=2)) == 2
