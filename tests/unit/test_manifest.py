"""fetcher.manifest and what it promises: the format round trip, malformed and unsafe manifests
refused, the listing checked against it, S3 checksum choice, and publish's local side."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from fetcher.commands.expected import manifest_jobs
from fetcher.commands.publish import local_files, upload_part_size
from fetcher.errors import EXIT_INTEGRITY, CacheError, IntegrityError, UnsafeKey
from fetcher.source.base import RemoteObject
from fetcher.transfer.plan import s3_expected
from fetcher.verify.hashes import part_hashes
from fetcher.verify.manifest import MANIFEST_NAME, Manifest, ManifestError, ManifestFile

MiB = 1 << 20
H = "0123456789abcdef" * 2  # any 32-hex digest


def entry(path: str = "model.safetensors", size: int = 10, part_size: int = 4) -> dict[str, Any]:
    return {
        "path": path,
        "size": size,
        "xxh3": H,
        "part_size": part_size,
        "parts": [H] * -(-size // part_size),
    }


def doc(*entries: dict[str, Any], **top: Any) -> str:
    base = {"format": "model-fetcher-manifest", "version": 1, "hash": "xxh3-128"}
    return json.dumps({**base, "files": list(entries), **top})


# --- the format ------------------------------------------------------------------------------


def test_round_trip_of_real_hashes(tmp_path: Path) -> None:
    data = os.urandom(5 * 1024 + 3)
    (tmp_path / "w.bin").write_bytes(data)
    (tmp_path / "empty").write_bytes(b"")
    files = []
    for name in ("w.bin", "empty"):
        whole, parts = part_hashes(tmp_path / name, 1024)
        size = (tmp_path / name).stat().st_size
        files.append(ManifestFile(f"sub/{name}", size, whole, 1024, tuple(parts)))
    manifest = Manifest(files)
    text = manifest.dumps()
    assert Manifest.loads(text) == manifest
    assert Manifest.loads(text.encode()) == manifest
    raw = json.loads(text)
    assert (raw["format"], raw["version"], raw["hash"]) == ("model-fetcher-manifest", 1, "xxh3-128")
    assert len(raw["files"][0]["parts"]) == 6 and raw["files"][1]["parts"] == []
    assert manifest.by_path()["sub/w.bin"].size == len(data)


def test_valid_hand_written_manifest_loads() -> None:
    m = Manifest.loads(doc(entry("a/b.bin", 9, 3), entry("c", 0, 8)))
    assert [(f.path, f.size, len(f.parts)) for f in m.files] == [("a/b.bin", 9, 3), ("c", 0, 0)]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{not json", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        ("[]", "not a model-fetcher manifest"),
        (json.dumps({"format": "other", "version": 1, "files": []}), "not a model-fetcher"),
        (doc(version=3), "unsupported version 3"),
        (doc(hash="sha256"), "unsupported hash 'sha256'"),
        (doc(files={"a": 1}), "'files' must be a list"),
    ],
    ids=["json", "binary", "array", "format", "version", "hash", "files-object"],
)
def test_malformed_document_refused(text: str | bytes, says: str) -> None:
    with pytest.raises(ManifestError, match=says):
        Manifest.loads(text)


def bad(**change: Any) -> dict[str, Any]:
    return {**entry(), **change}


@pytest.mark.parametrize(
    ("item", "says"),
    [
        ("model.safetensors", "not an object"),
        ({k: v for k, v in entry().items() if k != "path"}, "no path"),
        (bad(size=-1), "malformed entry"),
        (bad(size="10"), "malformed entry"),
        (bad(size=True), "malformed entry"),
        (bad(size=10.0), "malformed entry"),
        (bad(part_size=0, parts=[]), "malformed|part hashes"),
        (bad(xxh3="ABCDEF" * 5 + "AB"), "malformed entry"),
        (bad(xxh3=H[:-1]), "malformed entry"),
        (bad(xxh3=None), "malformed entry"),
        (bad(parts=H), "malformed part hashes"),
        (bad(parts=[H, H, "zz"]), "malformed part hashes"),
        (bad(parts=[H, H]), "2 part hashes for 10 bytes in parts of 4"),
        (bad(parts=[H] * 4), "4 part hashes"),
    ],
    ids=[
        "string",
        "no-path",
        "negative-size",
        "string-size",
        "bool-size",
        "float-size",
        "zero-part-size",
        "upper-hex",
        "short-hex",
        "no-hash",
        "parts-string",
        "bad-part",
        "too-few-parts",
        "too-many-parts",
    ],
)
def test_malformed_entry_refused(item: object, says: str) -> None:
    with pytest.raises(ManifestError, match=says):
        Manifest.loads(doc(item))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "path",
    [
        "../escape.bin",
        "a/../../b",
        "/etc/passwd",
        "a//b",
        "./a",
        "a/./b",
        "a\\b",
        "a\x00b",
        "a\nb",
        "",
        ".fetcher/state.json",
        ".fetcher",
        "dir/",
    ],
)
def test_unsafe_path_refused(path: str) -> None:
    with pytest.raises(ManifestError) as info:
        Manifest.loads(doc(entry(path)))
    assert isinstance(info.value, IntegrityError)
    assert info.value.exit_code == EXIT_INTEGRITY


def test_path_listed_twice_or_as_file_and_directory_refused() -> None:
    with pytest.raises(ManifestError, match=re.escape("a.bin is listed twice")):
        Manifest.loads(doc(entry("a.bin"), entry("b.bin"), entry("a.bin")))
    with pytest.raises(ManifestError, match="both a file and a directory"):
        Manifest.loads(doc(entry("sub/x/y.bin"), entry("sub/x")))
    with pytest.raises(ManifestError, match="lists itself"):
        Manifest.loads(doc(entry(MANIFEST_NAME)))


# --- the listing must agree with the manifest ------------------------------------------------


def obj(rel: str, size: int) -> RemoteObject:
    return RemoteObject("m/v1/" + rel, rel, size, f'"{rel}"')


def test_manifest_jobs_carry_the_expected_hashes() -> None:
    m = Manifest.loads(doc(entry("a.bin", 10, 4), entry("b.json", 3, 4)))
    jobs = manifest_jobs([obj("a.bin", 10), obj("b.json", 3)], m, lambda rel: True)
    assert [(j.obj.rel, j.expected.source, j.expected.part_size) for j in jobs] == [
        ("a.bin", "manifest", 4),
        ("b.json", "manifest", 4),
    ]
    assert jobs[0].expected.parts == (H, H, H) and jobs[0].expected.xxh3 == H


def test_manifest_jobs_refuse_a_missing_or_resized_file() -> None:
    m = Manifest.loads(doc(entry("a.bin", 10, 4), entry("b.json", 3, 4)))
    missing = "names b.json, which is missing from the bucket"
    with pytest.raises(ManifestError, match=re.escape(missing)):
        manifest_jobs([obj("a.bin", 10)], m, lambda rel: True)
    with pytest.raises(ManifestError, match=re.escape("a.bin: 11 bytes in the bucket, 10 in")):
        manifest_jobs([obj("a.bin", 11), obj("b.json", 3)], m, lambda rel: True)


def test_manifest_jobs_honour_the_filters_and_skip_unlisted_files() -> None:
    m = Manifest.loads(doc(entry("a.bin", 10, 4), entry("b.json", 3, 4)))
    jobs = manifest_jobs([obj("b.json", 3), obj("extra.txt", 1)], m, lambda rel: rel != "a.bin")
    assert [j.obj.rel for j in jobs] == ["b.json"]


# --- S3's own checksums ----------------------------------------------------------------------


def test_s3_checksum_choice() -> None:
    both = s3_expected({"ChecksumCRC32": "AAAAAA==", "ChecksumSHA256": "c2hh"})
    assert both is not None and (both.source, both.s3_value) == ("s3:sha256", "c2hh")
    crc = s3_expected({"ChecksumCRC32": "AAAAAA=="})
    assert crc is not None and crc.s3_algorithm == "crc32" and crc.xxh3 is None
    assert s3_expected({}) is None
    assert s3_expected({"ChecksumCRC32C": "AAAAAA=="}) is None  # not computable here


def test_composite_multipart_checksum_is_not_trusted() -> None:
    # A checksum of part checksums, as a multipart upload with checksums reports it.
    assert s3_expected({"ChecksumSHA256": "eClJ1P/EVWqn+B164A/KTTKM0KMiiT73C7QS4lceQ70=-2"}) is None
    fallback = s3_expected({"ChecksumSHA256": "x=-3", "ChecksumCRC32": "AAAAAA=="})
    assert fallback is not None and fallback.s3_algorithm == "crc32"


# --- publish, the local side -----------------------------------------------------------------


def test_upload_part_size_stays_within_s3_limits() -> None:
    assert upload_part_size(3 * MiB, 256 * 1024) == 8 * MiB
    assert upload_part_size(100 * MiB, 32 * MiB) == 32 * MiB
    big = 200 * 1024 * MiB  # 200 GiB in 8 MiB parts would be 25,600 parts
    size = upload_part_size(big, 8 * MiB)
    assert -(-big // size) <= 10_000 and size % MiB == 0


def test_local_files_follow_file_links_and_skip_our_state(tmp_path: Path) -> None:
    blobs, model = tmp_path / "blobs", tmp_path / "model"
    blobs.mkdir()
    (model / ".fetcher").mkdir(parents=True)
    (blobs / "abc").write_bytes(b"weights")
    (model / "model.safetensors").symlink_to(blobs / "abc")  # a Hugging Face snapshot
    (model / "config.json").write_text("{}")
    (model / MANIFEST_NAME).write_text("{}")
    (model / ".fetcher" / "state.json").write_text("{}")
    found = local_files(model)
    assert [(f.rel, f.size) for f in found] == [("config.json", 2), ("model.safetensors", 7)]


def test_local_files_refuse_dangling_links_and_unsafe_names(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "gone.bin").symlink_to(tmp_path / "nowhere")
    with pytest.raises(CacheError, match=re.escape("gone.bin: it is a link to nothing")):
        local_files(tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "bad\\name").write_text("x")
    with pytest.raises(UnsafeKey):
        local_files(tmp_path / "b")
    (tmp_path / "c").mkdir()
    with pytest.raises(CacheError, match="nothing to publish"):
        local_files(tmp_path / "c")
