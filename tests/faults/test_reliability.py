"""Faults survived, resume after a crash, one download per shared cache, outages (issue 4)."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devtools.seaweed import SeaweedServer, free_port
from fetcher.cache.layout import META_DIR, Layout
from tests.faults.proxy import (
    Callback,
    FaultProxy,
    ResetAfter,
    RewriteBody,
    Stall,
    Status,
    Truncate,
    WrongContentRange,
)
from tests.helpers import (
    BUCKET,
    Result,
    metric,
    mount_tmpfs,
    pod_env,
    popen_fetcher,
    run_fetcher,
    tree,
    wait_for_parts,
)

PART = 256 * 1024


def no_partial_under_final_names(dest: Path) -> None:
    for path in dest.rglob("*"):
        assert not path.name.endswith((".part", ".tmp")) or META_DIR in path.parts


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (ResetAfter(100_000), "reset"),
        (Truncate(70_000), "short_body"),
        (Status(503, "SlowDown"), "SlowDown"),
        (Status(500, "InternalError"), "InternalError"),
        (Stall(30, after=50_000), "read_timeout"),
        (WrongContentRange(), "range_mismatch"),
    ],
    ids=["reset", "truncated", "503-slowdown", "500", "stall", "wrong-content-range"],
)
def test_transient_fault_is_survived(
    fault: Any,
    reason: str,
    put: Callable[[str, bytes], None],
    fetch: Callable[..., Result],
    dest: Path,
    proxy: FaultProxy,
    prefix: str,
) -> None:
    data = os.urandom(4 * PART + 99)
    put("weights.bin", data)
    proxy.add_fault(fault, method="GET", path_contains=prefix, ranged=True, times=2, skip=1)
    textfile = dest.parent / "m.prom"
    res = fetch(
        endpoint=proxy.endpoint,
        FETCH_PART_SIZE=str(PART),
        FETCH_READ_TIMEOUT="1",
        METRICS_TEXTFILE=str(textfile),
    )
    assert res.code == 0, res.stderr
    assert tree(dest) == {"weights.bin": data}
    assert metric(textfile, "model_fetcher_retries_total", reason=reason) == 2
    no_partial_under_final_names(dest)


def test_persistent_fault_fails_after_the_retry_budget(
    put: Callable[[str, bytes], None],
    fetch: Callable[..., Result],
    dest: Path,
    proxy: FaultProxy,
    prefix: str,
) -> None:
    put("weights.bin", os.urandom(2 * PART))
    proxy.add_fault(Status(503, "SlowDown"), method="GET", path_contains=prefix, times=None)
    # A 503 on every request is the source away, not a part's bad luck: waited out for the
    # outage tolerance (issue 14), kept short here; one probe at a time in the meantime.
    res = fetch(
        endpoint=proxy.endpoint,
        FETCH_PART_SIZE=str(PART),
        FETCH_RETRIES="3",
        FETCH_OUTAGE_TOLERANCE="1s",
    )
    assert res.code == 3
    assert "SlowDown" in res.stderr
    assert tree(dest) == {}
    # attempts are per part: two parts x three attempts at most
    assert proxy.count("GET", path_contains=prefix) <= 6


def test_auth_errors_are_not_retried(
    put: Callable[[str, bytes], None], fetch: Callable[..., Result], proxy: FaultProxy, prefix: str
) -> None:
    put("weights.bin", os.urandom(PART))
    proxy.add_fault(Status(403, "AccessDenied"), method="GET", path_contains=prefix, times=None)
    res = fetch(endpoint=proxy.endpoint, FETCH_PART_SIZE=str(PART))
    assert res.code == 3
    assert proxy.count("GET", path_contains=prefix) == 1
    # The presigned URL carries the access key id and a signature: neither may leak.
    assert "X-Amz-" not in res.stderr and "Signature" not in res.stderr


def test_deadline_bounds_a_stalled_fetch(
    put: Callable[[str, bytes], None],
    fetch: Callable[..., Result],
    dest: Path,
    proxy: FaultProxy,
    prefix: str,
) -> None:
    put("weights.bin", os.urandom(2 * PART))
    proxy.add_fault(Stall(60, after=0), method="GET", path_contains=prefix, times=None)
    began = time.monotonic()
    res = fetch(endpoint=proxy.endpoint, FETCH_PART_SIZE=str(PART), FETCH_DEADLINE="2s")
    assert res.code == 3
    assert "FETCH_DEADLINE" in res.stderr
    assert time.monotonic() - began < 10
    assert tree(dest) == {}


@pytest.mark.parametrize("workers", ["1", "2"])
def test_object_replaced_mid_download_restarts_on_the_new_version(
    s3: Any,
    put: Callable[[str, bytes], None],
    fetch: Callable[..., Result],
    dest: Path,
    proxy: FaultProxy,
    prefix: str,
    workers: str,
) -> None:
    old, new = os.urandom(6 * PART), os.urandom(6 * PART)
    put("weights.bin", old)

    def replace() -> None:
        s3.put_object(Bucket=BUCKET, Key=prefix + "weights.bin", Body=new)

    proxy.add_fault(Callback(replace), method="GET", path_contains=prefix, skip=2)
    res = fetch(
        endpoint=proxy.endpoint,
        FETCH_PART_SIZE=str(PART),
        FETCH_CONCURRENCY="2",
        FETCH_WORKERS=workers,
    )
    assert res.code == 0, res.stderr
    # Never a splice of old and new, nor the zeros of a file the workers did not write into.
    assert (dest / "weights.bin").read_bytes() == new
    assert fetch("verify", "--full").code == 0
    assert res.events("object_changed")
    statuses = {r.status for r in proxy.requests if r.method == "GET" and prefix in r.path}
    assert 412 in statuses


def test_hostile_key_in_listing_is_refused(
    put: Callable[[str, bytes], None],
    fetch: Callable[..., Result],
    dest: Path,
    proxy: FaultProxy,
    prefix: str,
    tmp_path: Path,
) -> None:
    put("config.json", b"{}")
    evil = f"{prefix}../../../../escape.txt"

    def inject(body: bytes) -> bytes:
        return body.replace(
            f"<Key>{prefix}config.json</Key>".encode(), f"<Key>{evil}</Key>".encode()
        )

    proxy.add_fault(RewriteBody(inject), method="GET", path_contains=f"/{BUCKET}", ranged=False)
    res = fetch(endpoint=proxy.endpoint)
    assert res.code == 4, res.stderr
    assert "escape.txt" in res.stderr
    assert not list(tmp_path.rglob("escape.txt"))
    assert tree(dest) == {}


@pytest.mark.parametrize(
    "bad", ["/abs.bin", "a\\b.bin", "a//b.bin", ".fetcher/state.json", "./x.bin"]
)
def test_unsafe_keys_are_refused(
    bad: str,
    put: Callable[[str, bytes], None],
    fetch: Callable[..., Result],
    dest: Path,
    proxy: FaultProxy,
    prefix: str,
) -> None:
    # S3 servers normalise such keys on upload, so they reach us only from a hostile listing.
    put("config.json", b"{}")
    proxy.add_fault(
        RewriteBody(lambda body: body.replace(b"config.json</Key>", bad.encode() + b"</Key>")),
        method="GET",
        path_contains=f"/{BUCKET}",
        ranged=False,
    )
    res = fetch(endpoint=proxy.endpoint)
    assert res.code == 4, res.stderr
    assert "unsafe" in res.stderr
    assert tree(dest) == {}


def test_symlink_out_of_the_cache_is_not_followed(
    put: Callable[[str, bytes], None],
    fetch: Callable[..., Result],
    dest: Path,
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest.mkdir(parents=True)
    (dest / "sub").symlink_to(outside)
    put("sub/weights.bin", b"w")
    res = fetch()
    assert res.code == 4, res.stderr
    assert list(outside.iterdir()) == []


def test_corrupt_state_is_reported_by_verify_and_rebuilt_by_fetch(
    put: Callable[[str, bytes], None], fetch: Callable[..., Result], dest: Path
) -> None:
    put("config.json", b"{}")
    assert fetch().code == 0
    state_path = Layout(dest).state_path
    state_path.write_text("{not json")
    # The read-only commands cannot repair it: exit 5, one line naming the file and the fix.
    for command in ("verify", "status"):
        res = fetch(command)
        assert res.code == 5, (command, res.stderr)
        assert res.stdout == ""
        line = (dest.parent / "termination-log").read_text()
        assert f"cache state {state_path} is unreadable" in line and "a fetch rebuilds it" in line
        assert "\n" not in line.strip() and "Traceback" not in res.stderr
    # fetch treats it as no state: every file is checked again (by its bytes against S3's
    # checksum, so nothing is downloaded again: issue 13) and the state is written anew.
    res = fetch()
    assert res.code == 0, res.stderr
    assert res.events("state_corrupt")
    assert res.events("done")[0]["files_fetched"] == 0
    assert res.events("files_adopted")[0]["files"] == 1
    assert (dest / "config.json").read_bytes() == b"{}"
    assert json.loads(state_path.read_text())["complete"] is True
    assert fetch("verify").code == 0


# --- crash, stop and resume -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("sig", "code", "workers"),
    [
        (signal.SIGKILL, -9, 1),
        (signal.SIGTERM, 143, 1),
        (signal.SIGINT, 130, 1),
        (signal.SIGTERM, 143, 2),
    ],
    ids=["kill-9", "sigterm", "sigint", "sigterm-2-workers"],
)
def test_stopped_fetch_resumes_only_missing_parts(
    sig: signal.Signals,
    code: int,
    workers: int,
    s3_server: SeaweedServer,
    put: Callable[[str, bytes], None],
    dest: Path,
    proxy: FaultProxy,
    prefix: str,
) -> None:
    data = os.urandom(16 * PART)
    put("weights.bin", data)
    # The first 6 parts pass, then every ranged GET stalls: the run is stuck mid-file.
    proxy.add_fault(Stall(60, after=0), method="GET", path_contains=prefix, times=None, skip=6)
    env = {
        **pod_env(s3_server, prefix, dest, proxy.endpoint),
        "FETCH_PART_SIZE": str(PART),
        "FETCH_CONCURRENCY": "2",
        "FETCH_WORKERS": str(workers),
    }
    proc = popen_fetcher(env)
    wait_for_parts(dest, 6)
    began = time.monotonic()
    proc.send_signal(sig)
    assert proc.wait(timeout=10) == code
    assert time.monotonic() - began < 5
    assert not (dest / "weights.bin").exists()
    sent_first = proxy.bytes_sent(prefix)
    proxy.reset()
    textfile = dest.parent / "m.prom"
    res = run_fetcher([], {**env, "METRICS_TEXTFILE": str(textfile)})
    assert res.code == 0, res.stderr
    assert (dest / "weights.bin").read_bytes() == data
    assert res.events("resume")[0]["parts_kept"] >= 6
    # Resumed parts count as cached: the dashboard's (cached + downloaded) / expected is 1.
    cached = metric(textfile, "model_fetcher_bytes_cached")
    assert cached >= 6 * PART
    assert cached + metric(textfile, "model_fetcher_bytes_downloaded_total") >= len(data)
    # ... and the summary counts only what this run downloaded.
    kept = res.events("resume")[0]["parts_kept"]
    assert res.events("done")[0]["bytes_fetched"] == len(data) - kept * PART
    assert sent_first + proxy.bytes_sent(prefix) <= len(data) + 4 * PART
    _, stderr = proc.communicate()
    if sig != signal.SIGKILL:
        assert "stopped by signal" in stderr


def test_four_fetchers_share_one_cache(
    s3_server: SeaweedServer,
    put: Callable[[str, bytes], None],
    dest: Path,
    proxy: FaultProxy,
    prefix: str,
) -> None:
    files = {f"model-{i}.bin": os.urandom(6 * PART) for i in range(3)}
    for rel, data in files.items():
        put(rel, data)
    base = {**pod_env(s3_server, prefix, dest, proxy.endpoint), "FETCH_PART_SIZE": str(PART)}
    procs = [popen_fetcher({**base, "POD_NAME": f"replica-{i}"}) for i in range(4)]
    results = [(p.wait(timeout=120), p.communicate()[1]) for p in procs]
    assert [code for code, _ in results] == [0, 0, 0, 0], results
    assert tree(dest) == files
    model = sum(len(d) for d in files.values())
    assert proxy.bytes_sent(prefix) <= model * 1.1


def test_stale_lease_is_taken_over_and_fresh_one_waited_for(
    put: Callable[[str, bytes], None],
    fetch: Callable[..., Result],
    dest: Path,
) -> None:
    put("config.json", b"{}")
    Layout(dest).meta.mkdir(parents=True)
    lease = Layout(dest).lease_path
    ghost = {"holder": "old-pod", "host": "node-that-died", "pid": 1, "ttl": 2}
    lease.write_text(json.dumps({**ghost, "heartbeat": time.time() - 60}))
    res = fetch()
    assert res.code == 0, res.stderr
    assert res.events("lease_takeover")[0]["previous"] == "old-pod"
    assert not lease.exists()
    # A live lease held from another host: wait for it, then take over once it goes stale.
    lease.write_text(json.dumps({**ghost, "heartbeat": time.time()}))
    began = time.monotonic()
    res = fetch()
    assert res.code == 0, res.stderr
    assert res.events("lease_wait")[0]["holder"] == "old-pod"
    assert time.monotonic() - began >= 1.5


# --- outages, TLS and local errors --------------------------------------------------------


def test_outage_with_complete_cache_serves_it(
    put: Callable[[str, bytes], None], fetch: Callable[..., Result], dest: Path
) -> None:
    put("config.json", b"{}")
    assert fetch().code == 0
    dead = f"http://127.0.0.1:{free_port()}"
    res = fetch(endpoint=dead, FETCH_CONNECT_TIMEOUT="1")
    assert res.code == 0, res.stderr
    assert res.events("source_unreachable")
    assert tree(dest) == {"config.json": b"{}"}
    [done] = res.events("done")
    assert done["offline"] is True and done["files_kept"] == 1 and done["files_fetched"] == 0
    assert "1 kept, 0 removed (source unreachable" in done["msg"]


def test_outage_with_incomplete_cache_exits_3(fetch: Callable[..., Result], dest: Path) -> None:
    # Nothing to serve: the start waits the outage out first, up to FETCH_OUTAGE_TOLERANCE.
    began = time.monotonic()
    res = fetch(
        endpoint=f"http://127.0.0.1:{free_port()}",
        FETCH_CONNECT_TIMEOUT="1",
        FETCH_OUTAGE_TOLERANCE="2s",
    )
    assert res.code == 3
    assert "longer than FETCH_OUTAGE_TOLERANCE=2s" in res.stderr
    assert "cannot reach" in res.stderr and "incomplete" in res.stderr
    assert 2 <= time.monotonic() - began < 30
    assert len(res.events("source_unreachable")) == 1 and not res.events("source_back")


def test_unwritable_cache_exits_5_with_path_and_uid(
    put: Callable[[str, bytes], None],
    s3_server: SeaweedServer,
    prefix: str,
    tmp_path: Path,
) -> None:
    # Root ignores permission bits, so an unwritable cache is a read-only file system here.
    put("config.json", b"{}")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    mount_tmpfs(mnt, "ro,size=1m")
    try:
        res = run_fetcher([], pod_env(s3_server, prefix, mnt))
        assert res.code == 5, res.stderr
        # A read-only volume is named as such (issue 13), not as a permission problem.
        assert str(mnt) in res.stderr and "is on a read-only volume (EROFS)" in res.stderr
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_no_space_left_exits_5(
    put: Callable[[str, bytes], None],
    fetch: Callable[..., Result],
    tmp_path: Path,
    s3_server: SeaweedServer,
    prefix: str,
) -> None:
    put("small.json", b"{}")
    put("big.bin", os.urandom(3 * 2**20))
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    mount_tmpfs(mnt, "size=1m")
    try:
        res = run_fetcher([], pod_env(s3_server, prefix, mnt / "cache"))
        assert res.code == 5, res.stderr
        assert "space" in res.stderr
        assert not (mnt / "cache" / "big.bin").exists()
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_file_size_limit_mid_fetch_exits_5(
    put: Callable[[str, bytes], None], s3_server: SeaweedServer, prefix: str, dest: Path
) -> None:
    put("big.bin", os.urandom(2 * 2**20))
    env = {**pod_env(s3_server, prefix, dest), "FETCH_PART_SIZE": str(PART)}
    res = run_fetcher([], env, timeout=60, rlimit=(resource.RLIMIT_FSIZE, 2**20))
    assert res.code == 5, res.stderr
    assert not (dest / "big.bin").exists()


def test_worker_processes_split_the_parts(
    put: Callable[[str, bytes], None],
    fetch: Callable[..., Result],
    dest: Path,
    proxy: FaultProxy,
    prefix: str,
) -> None:
    files = {f"shard-{i}.bin": os.urandom(5 * PART + i) for i in range(3)}
    for rel, data in files.items():
        put(rel, data)
    proxy.add_fault(ResetAfter(10_000), method="GET", path_contains=prefix, ranged=True, skip=3)
    textfile = dest.parent / "m.prom"
    res = fetch(
        endpoint=proxy.endpoint,
        FETCH_PART_SIZE=str(PART),
        FETCH_WORKERS="2",
        METRICS_TEXTFILE=str(textfile),
    )
    assert res.code == 0, res.stderr
    assert tree(dest) == files
    assert res.events("workers")[0]["workers"] == 2
    assert metric(textfile, "model_fetcher_retries_total", reason="reset") == 1
    assert metric(textfile, "model_fetcher_bytes_downloaded_total") >= sum(map(len, files.values()))
    assert len({r.conn for r in proxy.requests if prefix in r.path}) >= 2


@pytest.mark.parametrize(
    ("ahead", "ttl"), [(3600.0, 30.0), (1e300, 1e300)], ids=["an-hour", "damaged"]
)
def test_lease_with_a_heartbeat_beyond_its_ttl_in_the_future_is_taken_over(
    put: Callable[[str, bytes], None],
    fetch: Callable[..., Result],
    dest: Path,
    ahead: float,
    ttl: float,
) -> None:
    """A dead holder whose clock ran ahead (or a damaged lease) must not be waited for."""
    put("config.json", b"{}")
    Layout(dest).meta.mkdir(parents=True)
    lease = Layout(dest).lease_path
    ghost = {"holder": "old-pod", "host": "node-ahead", "pid": 1, "ttl": ttl}
    lease.write_text(json.dumps({**ghost, "heartbeat": time.time() + ahead}))
    res = fetch(FETCH_DEADLINE="20s")
    assert res.code == 0, res.stderr
    [takeover] = res.events("lease_takeover")
    assert takeover["previous"] == "old-pod"
    assert "in the future, more than the" in takeover["msg"]
    assert not res.events("lease_wait")
    assert tree(dest) == {"config.json": b"{}"}
    assert not lease.exists()


def test_lease_with_a_heartbeat_ahead_within_its_ttl_is_waited_for(
    put: Callable[[str, bytes], None], fetch: Callable[..., Result], dest: Path
) -> None:
    """Clock skew smaller than the TTL is tolerated: the holder may be alive."""
    put("config.json", b"{}")
    Layout(dest).meta.mkdir(parents=True)
    lease = Layout(dest).lease_path
    ghost = {"holder": "old-pod", "host": "node-ahead", "pid": 1, "ttl": 2}
    lease.write_text(json.dumps({**ghost, "heartbeat": time.time() + 1.5}))
    began = time.monotonic()
    res = fetch()
    assert res.code == 0, res.stderr
    assert res.events("lease_wait")[0]["holder"] == "old-pod"
    assert "no heartbeat for" in res.events("lease_takeover")[0]["msg"]
    assert time.monotonic() - began >= 3
    assert tree(dest) == {"config.json": b"{}"}
