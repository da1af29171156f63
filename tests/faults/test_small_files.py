"""Small files (transfer/small.py, issue 14): one whole-object GET each, S3's checksums carried
by that GET instead of a HEAD, and the same guarantees as the part machinery's: bytes checked
before any final name, a reset resumed, a crash between rename and record repaired."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devtools.seaweed import SeaweedServer
from fetcher.cache.commits import CommitLog
from fetcher.cache.layout import Layout
from fetcher.cache.state import FileState, State
from fetcher.cache.store import Cache
from tests.faults.proxy import FaultProxy, FlipByte, ResetAfter
from tests.helpers import (
    BUCKET,
    Result,
    crash_after,
    metric,
    mount_tmpfs,
    pod_env,
    run_fetcher,
    tree,
)

PART = 256 * 1024


def _state(dest: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(Layout(dest).state_path.read_text())
    return doc


def test_small_files_take_one_get_each_and_their_checksum_comes_with_it(
    put: Callable[[str, bytes], None],
    fetch: Callable[..., Result],
    proxy: FaultProxy,
    prefix: str,
    dest: Path,
) -> None:
    files = {f"cache/k{i:03d}.bin": os.urandom(3000 + i) for i in range(40)}
    files["weights.bin"] = os.urandom(3 * PART + 5)  # four parts: the part machinery
    for rel, data in files.items():
        put(rel, data)  # boto3 uploads with a CRC32, which SeaweedFS keeps
    textfile = dest.parent / "metrics.prom"
    res = fetch(endpoint=proxy.endpoint, FETCH_PART_SIZE=str(PART), METRICS_TEXTFILE=str(textfile))
    assert res.code == 0, res.stderr
    assert tree(dest) == files
    recorded = _state(dest)["files"]
    assert {fs["checksum"] for fs in recorded.values()} == {"s3:crc32"}
    # A HEAD only for the large file (its ranged GETs carry no checksum); a small file's
    # checksum came with its GET, which asked for the whole object, without Range.
    heads = [r for r in proxy.requests if r.method == "HEAD"]
    assert [r.path.rsplit("/", 1)[1] for r in heads] == ["weights.bin"]
    small_gets = [r for r in proxy.requests if r.method == "GET" and "/cache/" in r.path]
    assert len(small_gets) == 40 and not any(r.ranged for r in small_gets)
    assert proxy.count(method="GET", path_contains=prefix + "weights.bin") == 4
    assert metric(textfile, "model_fetcher_files_total", result="downloaded") == 41
    assert not res.events("source_unverified")
    assert list(Layout(dest).partial_dir.iterdir()) == []
    # A line per large file; the small ones' are debug lines (thousands in a compile cache).
    assert [e["file"] for e in res.events("file_done")] == ["weights.bin"]


def test_small_file_corrupted_in_transit_fails_its_s3_checksum_and_is_never_placed(
    put: Callable[[str, bytes], None],
    fetch: Callable[..., Result],
    proxy: FaultProxy,
    prefix: str,
    dest: Path,
) -> None:
    put("config.json", b'{"a": 1}')
    put("tokenizer.bin", os.urandom(20000))
    proxy.add_fault(FlipByte(777), path_contains=prefix + "tokenizer.bin", times=None)
    textfile = dest.parent / "metrics.prom"
    res = fetch(endpoint=proxy.endpoint, METRICS_TEXTFILE=str(textfile))
    assert res.code == 4, res.stderr
    assert "checksum mismatch" in res.stderr and "crc32" in res.stderr
    assert "tokenizer.bin" in res.stderr and "Traceback" not in res.stderr
    assert not (dest / "tokenizer.bin").exists()
    assert not list(Layout(dest).partial_dir.glob("*.part"))  # bad bytes are not kept
    assert metric(textfile, "model_fetcher_checksum_failures_total") == 1
    assert "tokenizer.bin" not in _state(dest)["files"]


def test_small_file_reset_mid_body_resumes_and_keeps_the_first_answers_checksum(
    put: Callable[[str, bytes], None],
    fetch: Callable[..., Result],
    proxy: FaultProxy,
    prefix: str,
    dest: Path,
) -> None:
    data = os.urandom(200_000)
    put("vocab.bin", data)
    proxy.add_fault(ResetAfter(70_000), path_contains=prefix + "vocab.bin", times=1)
    res = fetch(endpoint=proxy.endpoint)
    assert res.code == 0, res.stderr
    assert tree(dest) == {"vocab.bin": data}
    gets = [r for r in proxy.requests if r.method == "GET" and "vocab.bin" in r.path]
    assert len(gets) == 2 and not gets[0].ranged
    # Both send the header their presigned URL is signed for (the resumed one gets no sums).
    assert all(r.headers.get("x-amz-checksum-mode") == "ENABLED" for r in gets)
    assert gets[1].range is not None and gets[1].range.endswith(f"-{len(data) - 1}")
    assert int(gets[1].range.split("=")[1].split("-")[0]) >= 64 * 1024  # resumed, not over
    # The resumed GET was ranged (no checksum in its answer): the first answer's was used.
    assert _state(dest)["files"]["vocab.bin"]["checksum"] == "s3:crc32"


def test_small_file_renamed_but_unrecorded_is_named_by_the_commit_log_and_repaired(
    s3: Any, put: Callable[[str, bytes], None], s3_server: Any, prefix: str, dest: Path
) -> None:
    put("a.json", b"{}")
    put("b.bin", b"old bytes")
    assert crash_after(pod_env(s3_server, prefix, dest), "commit", "b.bin") == 9
    assert (dest / "b.bin").read_bytes() == b"old bytes"  # under its final name, unrecorded
    assert "b.bin" in CommitLog(Layout(dest).commit_log).renamed()
    s3.delete_object(Bucket=BUCKET, Key=prefix + "b.bin")
    res = run_fetcher([], pod_env(s3_server, prefix, dest))
    assert res.code == 0, res.stderr
    assert tree(dest) == {"a.json": b"{}"}
    assert "removed b.bin: placed but never recorded" in [
        e["msg"] for e in res.events("commit_unrecorded")
    ]
    assert list(Layout(dest).partial_dir.iterdir()) == []


def test_commit_log_names_only_renames_that_happened(tmp_path: Path) -> None:
    """No server: the log's reading rule alone (a torn line, a rename not yet done)."""
    log = CommitLog(tmp_path / "commits.log")
    (tmp_path / "pending.part").write_bytes(b"x")
    log.add("done.bin", tmp_path / "done.part")  # its partial file is gone: renamed
    log.add("pending.bin", tmp_path / "pending.part")  # still there: no rename yet
    with open(log.path, "a") as fh:
        fh.write('{"rel": "torn.bin", "pa')  # cut short by a crash, before its rename
    assert log.renamed() == ["done.bin"]
    log.clear()
    assert not log.path.exists() and log.renamed() == []


def test_recover_still_honours_a_journal_of_the_earlier_format(tmp_path: Path) -> None:
    """A pod upgraded across a crash: the old journal said `committing` itself (no server)."""
    dest = tmp_path / "cache"
    cache = Cache(dest)
    cache.prepare()
    (dest / "old.bin").write_bytes(b"unrecorded")
    (dest / "kept.bin").write_bytes(b"recorded")
    journals = cache.partial_dir
    (journals / "aaaa.json").write_text(json.dumps({"committing": "old.bin", "done": {}}))
    (journals / "bbbb.json").write_text(json.dumps({"committing": "kept.bin", "done": {}}))
    state = State(files={"kept.bin": FileState(8, '"e"', "x", 0, "none")})
    cache.recover(state)
    assert not (dest / "old.bin").exists()
    assert (dest / "kept.bin").read_bytes() == b"recorded"
    assert list(journals.iterdir()) == []


def test_a_directory_in_place_of_a_file_is_refused_not_replaced(
    put: Callable[[str, bytes], None], fetch: Callable[..., Result], dest: Path
) -> None:
    put("tokenizer.json", b"{}")
    (dest / "tokenizer.json" / "inside").mkdir(parents=True)
    (dest / "tokenizer.json" / "inside" / "keep.txt").write_text("mine")
    res = fetch()
    assert res.code == 5, res.stderr
    assert f"refusing to replace {dest / 'tokenizer.json'}: it is a directory" in res.stderr
    assert (dest / "tokenizer.json" / "inside" / "keep.txt").read_text() == "mine"
    assert not list(Layout(dest).partial_dir.glob("*.part"))


def test_on_a_volume_of_its_own_a_batch_is_flushed_by_one_syncfs(
    put: Callable[[str, bytes], None],
    s3_server: SeaweedServer,
    prefix: str,
    tmp_path: Path,
) -> None:
    """DEST on a tmpfs mount (a whole file system, as a PVC is): the small files are made
    durable by syncfs per batch (cache/flush.py) and arrive whole, recorded, nothing left in
    .fetcher/partial. (On tmpfs durability itself cannot be observed; that the per-file
    fsyncs are skipped only after a good flush is tests/unit/test_flush.py.)"""
    files = {f"jit/d{i % 4}/k{i:03d}.bin": os.urandom(2000 + i) for i in range(200)}
    for rel, data in files.items():
        put(rel, data)
    mnt = tmp_path / "volume"
    mnt.mkdir()
    mount_tmpfs(mnt, "size=16m")
    try:
        dest = mnt / "cache"
        res = run_fetcher([], {**pod_env(s3_server, prefix, dest), "LOG_LEVEL": "debug"})
        assert res.code == 0, res.stderr
        assert tree(dest) == files
        assert len(res.events("volume_flush")) == 1
        assert set(_state(dest)["files"]) == set(files)
        assert list(Layout(dest).partial_dir.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
    # Beside it, on the root file system, no flush of the whole file system is made.
    other = tmp_path / "root-fs"
    res = run_fetcher([], {**pod_env(s3_server, prefix, other), "LOG_LEVEL": "debug"})
    assert res.code == 0, res.stderr
    assert tree(other) == files
    assert not res.events("volume_flush")
