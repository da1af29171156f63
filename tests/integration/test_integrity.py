"""Integrity end to end against a real SeaweedFS (issue 3): publish with a manifest, parts and
files checked as they arrive, S3's own checksums, safetensors / index checks, `verify`."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import xxhash

from devtools.sample_model import write_sample_model
from devtools.seaweed import SeaweedServer, boto3_client
from fetcher.cache.layout import Layout
from fetcher.verify.hashes import xxh3_file
from fetcher.verify.manifest import MANIFEST_NAME, Manifest
from tests.faults.proxy import Callback, FaultProxy, FlipByte
from tests.helpers import BUCKET, Result, metric, pod_env, run_fetcher, tree

PART = 256 * 1024  # the manifest's part size: a 1.5 MiB shard is six checked parts
SHARD1 = "model-00001-of-00002.safetensors"
SHARD2 = "model-00002-of-00002.safetensors"
INDEX = "model.safetensors.index.json"


# --- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid two-shard safetensors model of ~3 MiB; tests copy it before changing it."""
    root = tmp_path_factory.mktemp("model") / "model"
    write_sample_model(root, 3 << 20, shards=2, seed=3)
    return root


def publish_cmd(server: SeaweedServer, local: Path, prefix: str, **env: str) -> Result:
    base = pod_env(server, prefix, local.parent / "unused-dest")
    base.pop("MODEL_PREFIX")
    base.pop("MINIO_BUCKET")
    return run_fetcher(
        ["publish", str(local), f"s3://{BUCKET}/{prefix}"],
        {**base, "FETCH_PART_SIZE": str(PART), **env},
    )


@pytest.fixture(scope="module")
def published(s3_server: SeaweedServer, model: Path) -> str:
    """The sample model published once for the tests that only read it: its prefix."""
    prefix = f"pub-{uuid.uuid4().hex[:10]}/v1/"
    res = publish_cmd(s3_server, model, prefix)
    assert res.code == 0, res.stderr
    return prefix


@pytest.fixture
def own_copy(s3: Any, published: str, prefix: str) -> str:
    """A server-side copy of the published model (metadata kept) that a test may damage."""
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=published)["Contents"]
    for item in listing:
        rel = item["Key"][len(published) :]
        s3.copy_object(
            Bucket=BUCKET, Key=prefix + rel, CopySource={"Bucket": BUCKET, "Key": item["Key"]}
        )
    return prefix


@pytest.fixture
def plain_s3(s3_server: SeaweedServer) -> Any:
    """A boto3 client that adds no checksum of its own (boto3 adds CRC32 by default)."""
    return boto3_client(
        s3_server,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )


def model_files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}


def state(dest: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(Layout(dest).state_path.read_text())
    return doc


def resumable(dest: Path, etag: str) -> list[str]:
    """Journals of partial downloads of the object version `etag`: what a rerun would resume."""
    partial = Layout(dest).partial_dir
    if not partial.is_dir():
        return []
    found = []
    for journal in partial.glob("*.json"):
        if json.loads(journal.read_text()).get("etag") == etag:
            found.append(journal.name)
    return found


def flip_keep_mtime(path: Path, offset: int) -> None:
    """Flip one bit in place and restore the mtime, so only a re-hash can notice."""
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ 0x01]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def etag_of(s3: Any, key: str) -> str:
    return str(s3.head_object(Bucket=BUCKET, Key=key)["ETag"])


# --- publish ---------------------------------------------------------------------------------


def test_publish_then_fetch_round_trip(
    s3: Any, model: Path, published: str, fetch: Callable[..., Result], dest: Path
) -> None:
    doc = Manifest.loads(s3.get_object(Bucket=BUCKET, Key=published + MANIFEST_NAME)["Body"].read())
    entries = doc.by_path()
    assert sorted(entries) == sorted(model_files(model))
    assert entries[SHARD1].part_size == PART
    assert entries[SHARD1].xxh3 == xxh3_file(model / SHARD1)
    assert len(entries[SHARD1].parts) == -(-(model / SHARD1).stat().st_size // PART) > 1

    res = fetch(MODEL_PREFIX=published)
    assert res.code == 0, res.stderr
    assert tree(dest) == model_files(model)  # the manifest is not among the model files
    assert not (dest / MANIFEST_NAME).exists()
    kept = json.loads(Layout(dest).manifest_copy.read_text())
    assert Manifest.loads(kept["body"]) == doc
    st = state(dest)
    assert st["complete"] is True
    assert {f["checksum"] for f in st["files"].values()} == {"manifest"}
    assert not res.events("source_unverified")


def test_publish_rerun_skips_unchanged_and_uploads_changed(
    s3: Any, s3_server: SeaweedServer, model: Path, prefix: str, tmp_path: Path
) -> None:
    local = tmp_path / "model"
    shutil.copytree(model, local)
    big = os.urandom((8 << 20) + 4097)  # above publish's 8 MiB upload part: multipart
    (local / "original").mkdir()
    (local / "original" / "consolidated.bin").write_bytes(big)
    (local / "original" / "empty.txt").write_bytes(b"")
    first = publish_cmd(s3_server, local, prefix)
    assert first.code == 0, first.stderr
    files = len(model_files(local)) + 2
    assert counts(first) == (files, 0)
    head = s3.head_object(Bucket=BUCKET, Key=prefix + "original/consolidated.bin")
    assert head["ETag"].endswith('-2"')
    got = s3.get_object(Bucket=BUCKET, Key=prefix + "original/consolidated.bin")["Body"].read()
    assert got == big
    doc = Manifest.loads(s3.get_object(Bucket=BUCKET, Key=prefix + MANIFEST_NAME)["Body"].read())
    entry = doc.by_path()["original/consolidated.bin"]
    assert (entry.part_size, len(entry.parts)) == (PART, 33)  # hashed parts, not upload parts
    assert doc.by_path()["original/empty.txt"].parts == ()

    again = publish_cmd(s3_server, local, prefix)
    assert again.code == 0, again.stderr
    assert counts(again) == (0, files)
    assert not again.events("file_published")

    (local / "config.json").write_text('{"changed": true}\n')
    third = publish_cmd(s3_server, local, prefix)
    assert third.code == 0, third.stderr
    assert counts(third) == (1, files - 1)
    assert [e["file"] for e in third.events("file_published")] == ["config.json"]
    body = s3.get_object(Bucket=BUCKET, Key=prefix + "config.json")["Body"].read()
    assert body == b'{"changed": true}\n'
    doc = Manifest.loads(s3.get_object(Bucket=BUCKET, Key=prefix + MANIFEST_NAME)["Body"].read())
    assert doc.by_path()["config.json"].xxh3 == xxh3_file(local / "config.json")


def counts(res: Result) -> tuple[int, int]:
    (done,) = res.events("published")
    return done["uploaded"], done["skipped"]


def test_publish_refuses_an_invalid_model(
    s3: Any, s3_server: SeaweedServer, model: Path, prefix: str, tmp_path: Path
) -> None:
    local = tmp_path / "model"
    shutil.copytree(model, local)
    with open(local / SHARD2, "r+b") as fh:
        fh.truncate((local / SHARD2).stat().st_size - 10)
    res = publish_cmd(s3_server, local, prefix)
    assert res.code == 4, res.stderr
    assert SHARD2 in res.stderr and "truncated" in res.stderr
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)


# --- the cache, re-checked -------------------------------------------------------------------


def test_flipped_byte_in_cache_found_by_verify_full_and_repaired(
    model: Path, published: str, fetch: Callable[..., Result], dest: Path
) -> None:
    assert fetch(MODEL_PREFIX=published).code == 0
    flip_keep_mtime(dest / SHARD2, 4 * PART + 123)

    found = fetch("verify", "--full")
    assert found.code == 4, found.stderr
    (problem,) = json.loads(found.stdout)["problems"]
    assert problem.startswith(f"{SHARD2}: corrupt")
    assert [e["msg"] for e in found.events("verify_failed")] == [problem]

    repaired = fetch(MODEL_PREFIX=published, FETCH_VERIFY="full")
    assert repaired.code == 0, repaired.stderr
    assert [e["file"] for e in repaired.events("cache_corrupt")] == [SHARD2]
    assert repaired.events("done")[0]["files_fetched"] == 1
    assert tree(dest) == model_files(model)
    assert fetch("verify", "--full").code == 0


def test_warm_start_with_manifest_makes_no_get(
    published: str, fetch: Callable[..., Result], dest: Path, proxy: FaultProxy
) -> None:
    first = fetch(endpoint=proxy.endpoint, MODEL_PREFIX=published)
    assert first.code == 0, first.stderr
    assert proxy.count("GET", path_contains=published + MANIFEST_NAME) == 1
    proxy.reset()
    second = fetch(endpoint=proxy.endpoint, MODEL_PREFIX=published)
    assert second.code == 0, second.stderr
    assert proxy.count("GET", path_contains=published) == 0  # not even the manifest
    assert proxy.count("HEAD") == 0
    assert len(proxy.requests) == 1  # the LIST
    assert second.events("done")[0]["files_kept"] == len(tree(dest)) == 5


# --- bytes that do not match -----------------------------------------------------------------


def test_remote_bytes_differing_from_manifest_are_refused(
    s3: Any, own_copy: str, fetch: Callable[..., Result], dest: Path
) -> None:
    key = own_copy + SHARD1
    data = bytearray(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    data[3 * PART + 5] ^= 0xFF  # same size, different bytes: only the hashes can tell
    s3.put_object(Bucket=BUCKET, Key=key, Body=bytes(data))
    res = fetch(MODEL_PREFIX=own_copy, FETCH_RETRIES="2")
    assert res.code == 4, res.stderr
    assert f"part 3 of {SHARD1}" in res.stderr
    assert not (dest / SHARD1).exists()
    assert resumable(dest, etag_of(s3, key)) == []  # bad bytes are never resumed
    assert state(dest)["complete"] is False


@pytest.mark.parametrize("workers", ["1", "2"])  # in process, and in worker processes
def test_part_corrupted_once_in_transit_is_fetched_again(
    model: Path,
    published: str,
    fetch: Callable[..., Result],
    dest: Path,
    proxy: FaultProxy,
    workers: str,
) -> None:
    proxy.add_fault(FlipByte(1000), path_contains=published + SHARD2, ranged=True, times=1)
    textfile = dest.parent / "metrics.prom"
    res = fetch(
        endpoint=proxy.endpoint,
        MODEL_PREFIX=published,
        METRICS_TEXTFILE=str(textfile),
        FETCH_WORKERS=workers,
    )
    assert res.code == 0, res.stderr
    assert tree(dest) == model_files(model)
    assert metric(textfile, "model_fetcher_checksum_failures_total") == 1
    assert [e["file"] for e in res.events("part_checksum")] == [SHARD2]
    parts = -(-(model / SHARD2).stat().st_size // PART)
    assert proxy.count("GET", path_contains=published + SHARD2) == parts + 1


def test_part_corrupted_every_time_fails_after_the_retry_budget(
    s3: Any, published: str, fetch: Callable[..., Result], dest: Path, proxy: FaultProxy
) -> None:
    proxy.add_fault(FlipByte(7), path_contains=published + SHARD2, ranged=True, times=None)
    textfile = dest.parent / "metrics.prom"
    res = fetch(
        endpoint=proxy.endpoint,
        MODEL_PREFIX=published,
        FETCH_RETRIES="2",
        METRICS_TEXTFILE=str(textfile),
    )
    assert res.code == 4, res.stderr
    assert "checksum mismatch" in res.stderr and SHARD2 in res.stderr
    assert metric(textfile, "model_fetcher_checksum_failures_total") >= 2
    assert not (dest / SHARD2).exists()
    assert resumable(dest, etag_of(s3, published + SHARD2)) == []
    assert "integrity error" in (dest.parent / "termination-log").read_text()


def test_stale_manifest_fails_each_part_at_most_twice(
    s3: Any, model: Path, own_copy: str, fetch: Callable[..., Result], dest: Path, proxy: FaultProxy
) -> None:
    # The shard was replaced after publishing, same size, no new manifest: every part
    # mismatches, every time; that is the source, not the network.
    size = (model / SHARD2).stat().st_size
    s3.put_object(Bucket=BUCKET, Key=own_copy + SHARD2, Body=os.urandom(size))
    res = fetch(endpoint=proxy.endpoint, MODEL_PREFIX=own_copy)
    assert res.code == 4, res.stderr
    assert "checksum mismatch" in res.stderr and SHARD2 in res.stderr
    assert not (dest / SHARD2).exists()
    parts = -(-size // PART)
    assert proxy.count("GET", path_contains=own_copy + SHARD2) <= 2 * parts
    assert len(res.events("part_checksum")) <= 2 * parts


def test_object_replaced_by_another_size_mid_download_is_refused(
    s3: Any, own_copy: str, fetch: Callable[..., Result], dest: Path, proxy: FaultProxy
) -> None:
    key = own_copy + SHARD1

    def replace() -> None:
        s3.put_object(Bucket=BUCKET, Key=key, Body=os.urandom(2 << 20))

    proxy.add_fault(Callback(replace), path_contains=key, ranged=True, times=1, skip=1)
    res = fetch(endpoint=proxy.endpoint, MODEL_PREFIX=own_copy, FETCH_CONCURRENCY="1")
    assert res.code == 4, res.stderr
    assert SHARD1 in res.stderr
    assert not (dest / SHARD1).exists()


# --- the model itself ------------------------------------------------------------------------


def test_truncated_shard_is_refused_by_fetch_and_verify(
    model: Path, put: Callable[[str, bytes], None], fetch: Callable[..., Result], dest: Path
) -> None:
    for rel, data in model_files(model).items():
        put(rel, data[:-8] if rel == SHARD1 else data)  # no manifest: S3's CRC32 only
    res = fetch()
    assert res.code == 4, res.stderr
    assert SHARD1 in res.stderr and "truncated" in res.stderr
    assert state(dest)["complete"] is False
    checked = fetch("verify")
    assert checked.code == 4
    assert any(SHARD1 in p and "truncated" in p for p in json.loads(checked.stdout)["problems"])


def test_truncated_shard_never_appears_under_its_final_name(
    model: Path, put: Callable[[str, bytes], None], fetch: Callable[..., Result], dest: Path
) -> None:
    for rel, data in model_files(model).items():
        put(rel, data[:-8] if rel == SHARD1 else data)
    res = fetch()
    assert res.code == 4, res.stderr
    assert not (dest / SHARD1).exists()


def test_index_naming_a_missing_shard_is_refused_by_fetch_and_verify(
    model: Path, put: Callable[[str, bytes], None], fetch: Callable[..., Result], dest: Path
) -> None:
    for rel, data in model_files(model).items():
        if rel != SHARD2:
            put(rel, data)
    res = fetch()
    assert res.code == 4, res.stderr
    assert f"shard {SHARD2} which is missing" in res.stderr
    checked = fetch("verify")
    assert checked.code == 4
    assert any(SHARD2 in p for p in json.loads(checked.stdout)["problems"])


def test_shard_removed_from_the_cache_is_found_by_verify(
    model: Path, published: str, fetch: Callable[..., Result], dest: Path
) -> None:
    assert fetch(MODEL_PREFIX=published).code == 0
    (dest / SHARD1).unlink()
    with open(dest / SHARD2, "r+b") as fh:
        fh.truncate(1000)
    res = fetch("verify", str(dest), MODEL_CACHE_DIR="")
    assert res.code == 4
    problems = json.loads(res.stdout)["problems"]
    assert f"{SHARD1}: missing" in problems
    assert any(p.startswith(f"{SHARD2}: size 1000") for p in problems)


# --- without a manifest: S3's own checksums --------------------------------------------------


def test_s3_sha256_verified_without_manifest(
    s3: Any, prefix: str, fetch: Callable[..., Result], dest: Path
) -> None:
    files = {"config.json": b"{}", "weights.bin": os.urandom(3 * PART + 11)}
    for rel, data in files.items():
        s3.put_object(Bucket=BUCKET, Key=prefix + rel, Body=data, ChecksumAlgorithm="SHA256")
    res = fetch(FETCH_PART_SIZE=str(PART))
    assert res.code == 0, res.stderr
    assert tree(dest) == files
    assert {f["checksum"] for f in state(dest)["files"].values()} == {"s3:sha256"}
    assert not res.events("source_unverified")


def test_s3_sha256_mismatch_in_transit_is_refused(
    s3: Any, prefix: str, fetch: Callable[..., Result], dest: Path, proxy: FaultProxy
) -> None:
    data = os.urandom(3 * PART + 11)
    s3.put_object(Bucket=BUCKET, Key=prefix + "weights.bin", Body=data, ChecksumAlgorithm="SHA256")
    proxy.add_fault(FlipByte(99), path_contains=prefix + "weights.bin", ranged=True, times=1)
    res = fetch(endpoint=proxy.endpoint, FETCH_PART_SIZE=str(PART))
    assert res.code == 4, res.stderr
    assert "checksum mismatch" in res.stderr and "sha256" in res.stderr
    assert not (dest / "weights.bin").exists()
    assert resumable(dest, etag_of(s3, prefix + "weights.bin")) == []


def test_file_with_neither_manifest_nor_checksum_is_flagged_unverified(
    plain_s3: Any, prefix: str, fetch: Callable[..., Result], dest: Path
) -> None:
    plain_s3.put_object(Bucket=BUCKET, Key=prefix + "weights.bin", Body=b"w" * 5000)
    res = fetch()
    assert res.code == 0, res.stderr
    (warning,) = res.events("source_unverified")
    assert warning["files"] == 1 and warning["level"] == "warning"
    assert state(dest)["files"]["weights.bin"]["checksum"] == "none"


def composite(data: bytes, part_size: int) -> str:
    """The digest the cache records for a file with no whole-file reference, from scratch."""
    parts = [data[i : i + part_size] for i in range(0, len(data), part_size)] or [b""]
    return xxhash.xxh3_128_hexdigest(b"".join(xxhash.xxh3_128_digest(p) for p in parts))


def test_unverified_file_records_the_composite_of_its_parts_and_verify_full_checks_it(
    plain_s3: Any, prefix: str, fetch: Callable[..., Result], dest: Path
) -> None:
    # An odd part size and length: unaligned heads and tails of the direct writes too.
    part = PART + 1000
    files = {"weights.bin": os.urandom(5 * part + 4097), "empty.bin": b""}
    for rel, data in files.items():
        plain_s3.put_object(Bucket=BUCKET, Key=prefix + rel, Body=data)
    res = fetch(FETCH_PART_SIZE=str(part))
    assert res.code == 0, res.stderr
    assert tree(dest) == files
    recorded = state(dest)["files"]
    assert all(fs["checksum"] == "none" for fs in recorded.values())
    assert recorded["weights.bin"]["part_size"] == part
    assert recorded["weights.bin"]["xxh3"] == composite(files["weights.bin"], part)
    # A small file is fetched whole (transfer/small.py): its own xxh3, no parts.
    assert recorded["empty.bin"]["part_size"] is None
    assert recorded["empty.bin"]["xxh3"] == xxhash.xxh3_128_hexdigest(b"")
    assert fetch("verify", "--full").code == 0

    flip_keep_mtime(dest / "weights.bin", 3 * part + 17)
    found = fetch("verify", "--full")
    assert found.code == 4, found.stderr
    (problem,) = json.loads(found.stdout)["problems"]
    assert problem.startswith("weights.bin: corrupt")
    repaired = fetch(FETCH_VERIFY="full", FETCH_PART_SIZE=str(part))
    assert repaired.code == 0, repaired.stderr
    assert [e["file"] for e in repaired.events("cache_corrupt")] == ["weights.bin"]
    assert tree(dest) == files


def test_direct_io_off_writes_through_the_page_cache_with_the_same_result(
    plain_s3: Any, prefix: str, fetch: Callable[..., Result], dest: Path
) -> None:
    data = os.urandom(3 * PART + 4097)
    plain_s3.put_object(Bucket=BUCKET, Key=prefix + "weights.bin", Body=data)
    res = fetch(FETCH_DIRECT_IO="false", FETCH_PART_SIZE=str(PART))
    assert res.code == 0, res.stderr
    assert tree(dest) == {"weights.bin": data}
    assert state(dest)["files"]["weights.bin"]["xxh3"] == composite(data, PART)
    assert fetch("verify", "--full").code == 0


def test_manifest_digest_recorded_when_every_part_matched(
    model: Path, published: str, fetch: Callable[..., Result], dest: Path
) -> None:
    res = fetch(MODEL_PREFIX=published)
    assert res.code == 0, res.stderr
    recorded = state(dest)["files"]
    for rel in (SHARD1, SHARD2):
        assert recorded[rel]["checksum"] == "manifest"
        assert recorded[rel]["part_size"] is None  # a whole-file xxh3, as the manifest says
        assert recorded[rel]["xxh3"] == xxh3_file(model / rel)


# --- the manifest itself ---------------------------------------------------------------------


def test_manifest_naming_a_file_missing_from_the_bucket(
    s3: Any, own_copy: str, fetch: Callable[..., Result], dest: Path
) -> None:
    s3.delete_object(Bucket=BUCKET, Key=own_copy + SHARD2)
    res = fetch(MODEL_PREFIX=own_copy)
    assert res.code == 4, res.stderr
    assert f"names {SHARD2}, which is missing" in res.stderr
    assert tree(dest) == {}


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"format": "model-fetcher-manifest", "version": 1, "files": [', "not valid JSON"),
        (
            json.dumps(
                {
                    "format": "model-fetcher-manifest",
                    "version": 1,
                    "hash": "xxh3-128",
                    "files": [
                        {"path": "../escape", "size": 1, "xxh3": "0" * 32, "part_size": 8}
                        | {"parts": ["0" * 32]}
                    ],
                }
            ).encode(),
            "unsafe",
        ),
    ],
    ids=["truncated-json", "unsafe-path"],
)
def test_malformed_manifest_is_refused(
    put: Callable[[str, bytes], None],
    fetch: Callable[..., Result],
    dest: Path,
    body: bytes,
    says: str,
) -> None:
    put("config.json", b"{}")
    put(MANIFEST_NAME, body)
    res = fetch()
    assert res.code == 4, res.stderr
    assert MANIFEST_NAME in res.stderr and says in res.stderr
    assert tree(dest) == {}
