"""A MinIO restart mid-fetch is ridden out; an outage past FETCH_OUTAGE_TOLERANCE is exit 3 and
a resume fetches only what was missing (issue 14).

These tests stop and restart the S3 server itself, so they run against a SeaweedFS of their
own (the session's server is shared by every other test). A throttling proxy in front of it
keeps the fetch in flight long enough to stop the server in the middle; when the server is
down the proxy cannot connect upstream and drops the client connection, as a Service with no
ready endpoint does.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.seaweed import SeaweedServer, boto3_client
from tests.faults.proxy import Fault, FaultProxy, Throttle
from tests.helpers import BUCKET, Result, metric, pod_env, run_fetcher, seaweed_with_bucket, tree

PART = 256 * 1024
FILES = 6
FILE_SIZE = 4 * PART + 1234
CONCURRENCY = 4


@pytest.fixture(scope="module")
def own_server() -> Iterator[SeaweedServer]:
    with seaweed_with_bucket() as server:
        yield server


@pytest.fixture
def model(own_server: SeaweedServer) -> tuple[str, dict[str, bytes]]:
    if own_server.proc is None or own_server.proc.poll() is not None:
        own_server.start(same_ports=True)  # a previous test left it stopped
    prefix = f"outage-{uuid.uuid4().hex[:8]}/v1/"
    files = {f"shard-{i}.bin": os.urandom(FILE_SIZE) for i in range(FILES)}
    s3 = boto3_client(own_server)
    for rel, data in files.items():
        s3.put_object(Bucket=BUCKET, Key=prefix + rel, Body=data)
    return prefix, files


@pytest.fixture
def slow_proxy(own_server: SeaweedServer) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", own_server.ports["s3.port"]) as p:
        p.add_fault(Fault(Throttle(256 * 1024), method="GET", ranged=True, times=None))
        yield p


def _env(server: SeaweedServer, prefix: str, dest: Path, proxy: FaultProxy) -> dict[str, str]:
    return {
        **pod_env(server, prefix, dest, proxy.endpoint),
        "FETCH_PART_SIZE": str(PART),
        "FETCH_CONCURRENCY": str(CONCURRENCY),
        "FETCH_CONNECT_TIMEOUT": "2s",
        "FETCH_READ_TIMEOUT": "5s",
        "METRICS_TEXTFILE": str(dest.parent / "m.prom"),
    }


def _start(env: dict[str, str]) -> subprocess.Popen[str]:
    full = {"PATH": os.environ["PATH"], **env}
    cmd = [sys.executable, "-m", "fetcher"]
    return subprocess.Popen(cmd, env=full, text=True, stderr=subprocess.PIPE)


def _wait_for_bytes(proxy: FaultProxy, prefix: str, nbytes: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while proxy.bytes_sent(prefix) < nbytes:
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {nbytes} bytes sent after {timeout}s")
        time.sleep(0.05)


def _finish(proc: subprocess.Popen[str], timeout: float) -> Result:
    _, stderr = proc.communicate(timeout=timeout)
    return Result(proc.returncode, "", stderr)


def test_server_restart_mid_fetch_is_ridden_out(
    own_server: SeaweedServer,
    model: tuple[str, dict[str, bytes]],
    slow_proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    prefix, files = model
    dest = tmp_path / "cache"
    env = {**_env(own_server, prefix, dest, slow_proxy), "FETCH_OUTAGE_TOLERANCE": "90s"}
    proc = _start(env)
    total = FILES * FILE_SIZE
    _wait_for_bytes(slow_proxy, prefix, total // 4)
    own_server.stop()
    time.sleep(10)
    own_server.start(same_ports=True)
    res = _finish(proc, timeout=120)
    assert res.code == 0, res.stderr
    assert tree(dest) == files
    assert len(res.events("source_unreachable")) == 1
    back = res.events("source_back")
    assert len(back) == 1 and back[0]["outage_s"] >= 5
    # Parts resume at the byte where they stopped: at most what was in flight is fetched twice.
    assert slow_proxy.bytes_sent(prefix) <= total + CONCURRENCY * PART
    textfile = dest.parent / "m.prom"
    assert metric(textfile, "model_fetcher_source_up") == 1
    assert metric(textfile, "model_fetcher_outage_seconds_total") >= 5


def test_outage_past_the_tolerance_exits_3_and_resume_fetches_only_the_rest(
    own_server: SeaweedServer,
    model: tuple[str, dict[str, bytes]],
    slow_proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    prefix, files = model
    dest = tmp_path / "cache"
    env = {**_env(own_server, prefix, dest, slow_proxy), "FETCH_OUTAGE_TOLERANCE": "3s"}
    proc = _start(env)
    total = FILES * FILE_SIZE
    _wait_for_bytes(slow_proxy, prefix, total // 3)
    began = time.monotonic()
    own_server.stop()
    try:
        first = _finish(proc, timeout=60)
        took = time.monotonic() - began
    finally:
        own_server.start(same_ports=True)
    assert first.code == 3, first.stderr
    waited = re.search(
        r"unreachable for ([0-9.]+)s, longer than FETCH_OUTAGE_TOLERANCE=3s", first.stderr
    )
    assert waited is not None, first.stderr
    assert 3 <= float(waited.group(1)) <= took < 30
    assert len(first.events("source_unreachable")) == 1
    assert metric(dest.parent / "m.prom", "model_fetcher_source_up") == 0
    for path in dest.iterdir():  # nothing unverified under a final name
        assert path.name == ".fetcher" or files[path.name] == path.read_bytes()
    sent_first = slow_proxy.bytes_sent(prefix)
    slow_proxy.reset()
    again = run_fetcher([], env)
    assert again.code == 0, again.stderr
    assert tree(dest) == files
    fetched = again.events("done")[0]["bytes_fetched"]
    assert slow_proxy.bytes_sent(prefix) == fetched < total
    assert sent_first + fetched <= total + CONCURRENCY * PART


def test_start_during_an_outage_waits_for_the_source_when_nothing_can_be_served(
    own_server: SeaweedServer, model: tuple[str, dict[str, bytes]], tmp_path: Path
) -> None:
    """A pod started while MinIO restarts (an empty cache): the first LIST waits it out."""
    prefix, files = model
    dest = tmp_path / "cache"
    env = {
        **pod_env(own_server, prefix, dest),
        "FETCH_CONNECT_TIMEOUT": "1s",
        "FETCH_OUTAGE_TOLERANCE": "60s",
        "METRICS_TEXTFILE": str(dest.parent / "m.prom"),
    }
    own_server.stop()
    try:
        proc = _start(env)
        time.sleep(4)
        assert proc.poll() is None  # still waiting, not failed
    finally:
        own_server.start(same_ports=True)
    res = _finish(proc, timeout=120)
    assert res.code == 0, res.stderr
    assert tree(dest) == files
    assert len(res.events("source_unreachable")) == 1
    (back,) = res.events("source_back")
    assert back["outage_s"] >= 3
    textfile = dest.parent / "m.prom"
    assert metric(textfile, "model_fetcher_source_up") == 1
    assert metric(textfile, "model_fetcher_outage_seconds_total") >= 3
