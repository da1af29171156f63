"""`make soak`: the fault mix, again and again, for a few minutes; corrupt files must be 0.

Each round fetches a published model (with its manifest) through the fault proxy into a fresh
cache, with a random handful of faults scripted on the ranged GETs; every third round is killed
with SIGKILL half-way and resumed, and every fourth has an outage: the S3 server itself is
stopped for a few seconds mid-fetch and started again on the same ports and data (a MinIO
restart, issue 14), which FETCH_OUTAGE_TOLERANCE must ride out. Every file on disk is compared
with the source.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from devtools.sample_model import write_sample_model
from devtools.seaweed import SeaweedServer, boto3_client, start_temporary
from fetcher.cache.layout import META_DIR
from tests.faults.proxy import (
    FaultProxy,
    FlipByte,
    ResetAfter,
    Stall,
    Status,
    Truncate,
    WrongContentRange,
)

BUCKET, PREFIX, PART = "llm-models", "soak/v1/", 256 * 1024


def random_fault(rng: random.Random) -> object:
    return rng.choice(
        [
            ResetAfter(rng.randrange(1, PART)),
            Truncate(rng.randrange(1, PART)),
            Status(503, "SlowDown"),
            Status(500, "InternalError"),
            Stall(5, after=rng.randrange(PART)),
            WrongContentRange(),
            FlipByte(rng.randrange(PART)),
        ]
    )


def run_round(env: dict[str, str], kill: bool) -> int:
    cmd = [sys.executable, "-m", "fetcher"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if kill:
        time.sleep(random.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc.wait(timeout=300)


def _add_compile_cache(where: Path, files: int, rng: random.Random) -> None:
    """Small files beside the weights (a torch.compile cache's shape): the faults and the
    kills then also land on the small-file path (transfer/small.py, syncer.py)."""
    for i in range(files):
        path = where / f"k{i % 6}" / f"entry-{i:04d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randrange(1, 96 * 1024)))


def corrupt_files(source: Path, dest: Path) -> int:
    bad = 0
    for path in source.rglob("*"):
        if path.is_file():
            got = dest / path.relative_to(source)
            if got.exists() and got.read_bytes() != path.read_bytes():
                bad += 1
    partial_names = [
        p for p in dest.rglob("*") if META_DIR not in p.parts and p.suffix in (".part", ".tmp")
    ]
    return bad + len(partial_names)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="fetcher-soak-"))
    server = start_temporary()
    proxy = FaultProxy("127.0.0.1", server.ports["s3.port"]).start()
    stats = {
        "rounds": 0,
        "ok": 0,
        "failed": 0,
        "killed_and_resumed": 0,
        "outages": 0,
        "corrupt_files": 0,
        "faults": 0,
    }
    try:
        boto3_client(server).create_bucket(Bucket=BUCKET)
        write_sample_model(work / "model", 24 * 2**20, shards=3)
        _add_compile_cache(work / "model" / "jit", files=300, rng=rng)
        env = {
            **os.environ,
            "MINIO_ENDPOINT": server.endpoint,
            "MINIO_BUCKET": BUCKET,
            "MINIO_ACCESS_KEY": server.access_key,
            "MINIO_SECRET_KEY": server.secret_key,
            "FETCH_PART_SIZE": str(PART),
        }
        env.pop("AWS_CA_BUNDLE", None)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "fetcher",
                "publish",
                str(work / "model"),
                f"s3://{BUCKET}/{PREFIX}",
            ],
            env=env,
            check=True,
            stderr=subprocess.DEVNULL,
        )
        env |= {
            "MINIO_ENDPOINT": proxy.endpoint,
            "MODEL_PREFIX": PREFIX,
            "FETCH_READ_TIMEOUT": "1",
            "FETCH_CONCURRENCY": "8",
        }
        deadline = time.monotonic() + args.minutes * 60
        while time.monotonic() < deadline:
            soak_round(rng, server, proxy, env, work, stats)
    finally:
        proxy.stop()
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    print(" ".join(f"{k}={v}" for k, v in stats.items()))
    return 1 if stats["corrupt_files"] or not stats["ok"] else 0


def outage(
    server: SeaweedServer, proxy: FaultProxy, after: float, seconds: float
) -> threading.Thread:
    """Once model bytes flow, wait `after` seconds, stop the server for `seconds`, then start
    it where it was. Mid-fetch: the LIST at start-up has no outage tolerance (a complete cache
    is served at once when S3 is away, DESIGN.md)."""

    def run() -> None:
        deadline = time.monotonic() + 30
        while proxy.bytes_sent(PREFIX) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(after)
        server.stop()
        time.sleep(seconds)
        server.start(same_ports=True)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def soak_round(
    rng: random.Random,
    server: SeaweedServer,
    proxy: FaultProxy,
    env: dict[str, str],
    work: Path,
    stats: dict[str, int],
) -> None:
    dest = work / "cache"
    shutil.rmtree(dest, ignore_errors=True)
    proxy.reset()
    for _ in range(rng.randrange(1, 6)):
        proxy.add_fault(
            random_fault(rng),
            method="GET",
            ranged=True,  # type: ignore[arg-type]
            path_contains=PREFIX,
            skip=rng.randrange(0, 40),
        )
        stats["faults"] += 1
    kill = stats["rounds"] % 3 == 2
    down = (
        None if kill or stats["rounds"] % 4 != 1 else outage(server, proxy, rng.uniform(0, 0.3), 4)
    )
    code = run_round({**env, "MODEL_CACHE_DIR": str(dest)}, kill)
    if down is not None:
        down.join()  # the server is back before the next round
        stats["outages"] += 1
    stats["rounds"] += 1
    stats["killed_and_resumed"] += kill
    stats["ok" if code == 0 else "failed"] += 1
    stats["corrupt_files"] += corrupt_files(work / "model", dest)
    print(f"round {stats['rounds']}: exit {code}{' (after kill -9)' if kill else ''}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
