"""The byte path against the real server when our own side misbehaves: a write that fails or
stalls, a request cancelled mid-body, worker processes that die or stay open.

The sinks here are our own callbacks (the file writer is swapped for one that records, fails
or sleeps); the server, the sockets and the HTTP are real.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import xxhash

from devtools.seaweed import SeaweedServer
from fetcher.config import Config
from fetcher.errors import CacheError, WorkerLost
from fetcher.transfer.http import RangeGetter, RangeRequest
from fetcher.transfer.parts import PartTask
from fetcher.transfer.workers import WorkerPool
from tests.faults.proxy import FaultProxy, Stall
from tests.helpers import (
    BUCKET,
    Result,
    metric,
    pod_env,
    popen_fetcher,
    run_fetcher,
    tree,
)

MIB = 2**20


def _request(s3: Any, key: str, size: int) -> RangeRequest:
    head = s3.head_object(Bucket=BUCKET, Key=key)
    url = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": key})
    return RangeRequest(url, key, head["ETag"], 0, size - 1, size)


def _get(req: RangeRequest, sink: Callable[[memoryview, int], None], read_timeout: float) -> None:
    async def run() -> None:
        getter = RangeGetter(4, connect_timeout=5, read_timeout=read_timeout, ssl_context=None)
        try:
            async with asyncio.timeout(30):  # a hang fails the test instead of stalling it
                await getter.get(req, sink)
        finally:
            getter.close()

    asyncio.run(run())


def test_failed_write_of_the_last_bytes_fails_the_request(
    s3: Any, put: Callable[[str, bytes], None], prefix: str
) -> None:
    # 3 MiB: the first 2 MiB go to the writer thread (slowed, so it is still busy when the
    # body ends); the last 1 MiB is written on the loop after it, and that write fails.
    put("w.bin", os.urandom(3 * MIB))
    req = _request(s3, prefix + "w.bin", 3 * MIB)

    def sink(data: memoryview, offset: int) -> None:
        if offset == 0:
            time.sleep(0.3)
            return
        raise CacheError("no space left to write w.bin")

    started = time.monotonic()
    with pytest.raises(CacheError, match="no space left"):
        _get(req, sink, read_timeout=5)
    assert time.monotonic() - started < 5  # failed at once, not by the read timeout


def test_slow_writes_are_not_a_silent_source(
    s3: Any, put: Callable[[str, bytes], None], prefix: str
) -> None:
    data = os.urandom(8 * MIB)
    put("w.bin", data)
    req = _request(s3, prefix + "w.bin", len(data))
    got = bytearray(len(data))

    def sink(chunk: memoryview, offset: int) -> None:
        time.sleep(0.6)  # each write takes longer than the read timeout below
        got[offset : offset + len(chunk)] = chunk

    _get(req, sink, read_timeout=0.25)
    assert bytes(got) == data


def test_cancelled_request_returns_only_after_its_write_landed(
    s3: Any, put: Callable[[str, bytes], None], prefix: str
) -> None:
    put("w.bin", os.urandom(8 * MIB))
    req = _request(s3, prefix + "w.bin", 8 * MIB)
    events: list[tuple[str, int]] = []

    async def run() -> None:
        loop, writing = asyncio.get_running_loop(), asyncio.Event()

        def sink(chunk: memoryview, offset: int) -> None:
            loop.call_soon_threadsafe(writing.set)
            time.sleep(0.5)
            events.append(("write done", offset))

        getter = RangeGetter(4, connect_timeout=5, read_timeout=5, ssl_context=None)
        task = asyncio.create_task(getter.get(req, sink))
        await writing.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        events.append(("cancelled", -1))
        getter.close()

    asyncio.run(run())
    # The caller may close the file, and reuse its descriptor number, once the request is
    # cancelled: every write it started has landed by then, and none starts after.
    assert events[0] == ("write done", 0) and events[1] == ("cancelled", -1)
    assert len(events) == 2


def _pool_task(s3: Any, key: str, size: int) -> tuple[PartTask, str]:
    head = s3.head_object(Bucket=BUCKET, Key=key)
    url = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": key})
    return PartTask(key, key, head["ETag"], size, 0, 0, size - 1), url


class _Counting:
    def __init__(self) -> None:
        self.bytes = 0

    def on_bytes(self, nbytes: int) -> None:
        self.bytes += nbytes

    def on_retry(self, reason: str) -> None: ...
    def on_request(self, seconds: float) -> None: ...
    def on_inflight(self, delta: int) -> None: ...
    def on_source(self, up: bool, outage_seconds: float) -> None: ...
    def on_checksum_failure(self, nbytes: int) -> None: ...


def _pool_config() -> Config:
    # The workers talk to the test server over plain http: Config.https is False.
    return Config(
        dest=Path("/nonexistent"),
        endpoint="http://127.0.0.1:1",
        concurrency=4,
        workers=2,
        retries=3,
        connect_timeout=5.0,
        read_timeout=5.0,
        log_level="warning",
    )


def test_dead_idle_worker_is_passed_over_and_no_worker_left_fails_at_once(
    s3: Any, put: Callable[[str, bytes], None], prefix: str, tmp_path: Path
) -> None:
    data = os.urandom(MIB + 5)
    put("w.bin", data)
    task, url = _pool_task(s3, prefix + "w.bin", len(data))
    target = tmp_path / "w.part"
    target.write_bytes(b"\0" * len(data))

    async def run() -> None:
        pool = await WorkerPool.start(_pool_config(), _Counting())
        try:
            first = pool.workers[0]
            first.proc.send_signal(signal.SIGKILL)
            await first.proc.wait()
            async with asyncio.timeout(30):
                await asyncio.wait([first.reader])  # its output ends a moment after it dies
                digest = await pool.download(task, target, url)
            assert digest == xxhash.xxh3_128_hexdigest(data)
            pool.workers[1].proc.send_signal(signal.SIGKILL)
            await pool.workers[1].proc.wait()
            async with asyncio.timeout(30):
                await asyncio.wait([pool.workers[1].reader])
                with pytest.raises(WorkerLost, match="every worker process"):
                    await pool.download(task, target, url)
        finally:
            await pool.close(abort=True)

    asyncio.run(run())
    assert target.read_bytes() == data


def test_workers_keep_no_descriptor_per_file(
    put: Callable[[str, bytes], None], s3_server: SeaweedServer, prefix: str, dest: Path
) -> None:
    # Each worker used to keep two descriptors per file it had written a part of.
    files = {f"f{i:03}.json": os.urandom(64 + i) for i in range(160)}
    for rel, data in files.items():
        put(rel, data)
    env = {**pod_env(s3_server, prefix, dest), "FETCH_WORKERS": "2"}
    res = run_fetcher([], env, rlimit=(resource.RLIMIT_NOFILE, 128))
    assert res.code == 0, res.stderr[-2000:]
    assert tree(dest) == files


def test_parts_of_a_killed_worker_are_fetched_by_another(
    put: Callable[[str, bytes], None],
    s3_server: SeaweedServer,
    proxy: FaultProxy,
    prefix: str,
    dest: Path,
) -> None:
    part = 256 * 1024
    data = os.urandom(12 * part)
    put("weights.bin", data)
    # The first request of each worker stalls for a while; one worker is then OOM-killed. (The
    # 7th and 8th requests, stalled before, could both be one worker's, one after the other,
    # with nothing left on the other: killing that one lost no part, 1 run in 6.)
    stall = proxy.add_fault(Stall(3, after=0), method="GET", path_contains=prefix, times=2)
    env = {
        **pod_env(s3_server, prefix, dest, proxy.endpoint),
        "FETCH_PART_SIZE": str(part),
        "FETCH_CONCURRENCY": "2",
        "FETCH_WORKERS": "2",
        "METRICS_TEXTFILE": str(dest.parent / "m.prom"),
    }
    proc = popen_fetcher(env)
    # Both stalled requests in flight: with one request per worker, each worker holds one.
    deadline = time.monotonic() + 30
    while stall.applied < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    os.kill(int(children[0]), signal.SIGKILL)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-2000:]
    assert (dest / "weights.bin").read_bytes() == data
    res = Result(proc.returncode, "", stderr)
    lost = res.events("worker_lost")  # one per part it held
    assert lost, stderr[-3000:]
    assert all(f"{children[0]} was killed by signal 9" in e["msg"] for e in lost)
    assert run_fetcher(["verify", "--full"], env).code == 0
    # The requests the dead worker had in flight are not left counted as in flight.
    assert metric(dest.parent / "m.prom", "model_fetcher_inflight_requests") == 0


def test_sigterm_is_prompt_while_the_listing_hangs(dest: Path) -> None:
    # A server that accepts and never answers: the LIST blocks a thread for minutes.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        env = {
            "MINIO_ENDPOINT": f"http://127.0.0.1:{silent.getsockname()[1]}",
            "MINIO_BUCKET": BUCKET,
            "MODEL_PREFIX": "m/v1/",
            "MODEL_CACHE_DIR": str(dest),
            "MINIO_ACCESS_KEY": "k",
            "MINIO_SECRET_KEY": "s",
            "LOG_FORMAT": "json",
        }
        proc = popen_fetcher(env)
        time.sleep(1.5)  # well into the LIST
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
        assert time.monotonic() - began < 5  # was 207 s: the process waited for the thread
        _, stderr = proc.communicate()
        assert "stopped by signal" in stderr
    finally:
        silent.close()
