"""`make bench-files`: many small files (compile caches, tokenizer sets, adapters), issue 14.

Uploads N files of one size to a fresh SeaweedFS on 127.0.0.1 and downloads them with each
tool into a fresh directory, tools alternating within each round (the first round is a
warm-up); then a warm start of the fetcher on its complete cache, and a start-up row (one
file of 1 KiB). Prints one table: the median wall time, CPU seconds, and CPU per file.
Compare rows of one run only: the machine is shared and loopback timings are noisy.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.tools import Source, base_env, binary, byte_compile, fetcher_env, select
from devtools.seaweed import SeaweedServer, boto3_client, start_temporary

BUCKET = "bench-files"
Command = Callable[[SeaweedServer, str, Path], tuple[list[str], dict[str, str]]]


def _source(server: SeaweedServer, prefix: str) -> Source:
    return Source(server.endpoint, BUCKET, prefix, server.access_key, server.secret_key)


def _fetcher(server: SeaweedServer, prefix: str, dest: Path) -> tuple[list[str], dict[str, str]]:
    env = {**fetcher_env(_source(server, prefix)), "MODEL_CACHE_DIR": str(dest)}
    return [binary("model-fetcher")], {**env, "FETCH_TERMINATION_LOG": str(dest.parent / "t")}


def _tool(name: str) -> Command:
    """A peer invoked exactly as `make bench` invokes it (bench/tools.py): s5cmd, rclone, or
    boto3's `download_file` an object at a time (bench/peers.py)."""
    tool = select([name], [])[0]

    def command(server: SeaweedServer, prefix: str, dest: Path) -> tuple[list[str], dict[str, str]]:
        return tool.command(_source(server, prefix), dest)

    return command


TOOLS: dict[str, Command] = {
    "model-fetcher": _fetcher,
    "s5cmd": _tool("s5cmd"),
    "rclone": _tool("rclone"),
    "boto3": _tool("boto3"),
}


def _baseline(tree: Path) -> Command:
    """model-fetcher from another checkout (e.g. `git worktree add /tmp/orig <rev>`), in the
    same run: a before/after pair measured side by side on this noisy machine."""

    def command(server: SeaweedServer, prefix: str, dest: Path) -> tuple[list[str], dict[str, str]]:
        # The console script, not `python -m`: that would put the working directory (this
        # checkout) before PYTHONPATH.
        argv, env = _fetcher(server, prefix, dest)
        return argv, {**env, "PYTHONPATH": str(tree)}

    return command


def upload(server: SeaweedServer, prefix: str, files: int, size: int) -> None:
    s3 = boto3_client(server)
    body = os.urandom(size)

    def put(i: int) -> None:
        s3.put_object(Bucket=BUCKET, Key=f"{prefix}d{i % 10}/f{i:05d}.bin", Body=body)

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(put, range(files)))


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of one run of `argv`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.monotonic()
    proc = subprocess.run(argv, env={**base_env(), **env}, capture_output=True, timeout=900)
    wall = time.monotonic() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {proc.stderr[-2000:]!r}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def scenario(
    server: SeaweedServer, work: Path, label: str, prefix: str, files: int, rounds: int
) -> list[tuple[str, int, float, float]]:
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in TOOLS}
    warm: list[tuple[float, float]] = []
    for r in range(rounds):
        for name, command in TOOLS.items():
            dest = work / f"dest-{name}"
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            argv, env = command(server, prefix, dest)
            # Each run starts with nothing dirty: the peers do not fsync, and what
            # they (or the deletion above) leave unwritten must not be flushed, and timed,
            # by the next tool's first fsync or syncfs.
            os.sync()
            measured = timed(argv, env)
            if name == "model-fetcher":
                os.sync()
                warm.append(timed(argv, env))  # again, on the complete cache
            if r:
                results[name].append(measured)
            shutil.rmtree(dest, ignore_errors=True)
    rows = [(f"{label} {name}", files, *_median(runs)) for name, runs in results.items()]
    rows.append((f"{label} model-fetcher warm start", files, *_median(warm[1:])))
    return rows


def _median(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--files", type=int, nargs="+", default=[1000])
    ap.add_argument("--file-size", type=int, default=64 * 1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", type=Path, help="a checkout of an earlier model-fetcher")
    ap.add_argument(
        "--dest",
        type=Path,
        help="where the tools write (default: a temporary directory); e.g. a journaled ext4 "
        "mount like a PVC's, where fsync and inode allocation cost what they cost there",
    )
    args = ap.parse_args()
    if args.baseline:
        TOOLS["model-fetcher baseline"] = _baseline(args.baseline.resolve())
    byte_compile(*([args.baseline.resolve()] if args.baseline else []))
    work = Path(tempfile.mkdtemp(prefix="bench-files-", dir=args.dest))
    server = start_temporary()
    rows = []
    try:
        boto3_client(server).create_bucket(Bucket=BUCKET)
        upload(server, "startup/", 1, 1024)
        rows += scenario(server, work, "start-up (1 x 1 KiB)", "startup/", 1, args.rounds)
        for n in args.files:
            prefix = f"files-{n}/"
            upload(server, prefix, n, args.file_size)
            label = f"{n} x {args.file_size // 1024} KiB"
            rows += scenario(server, work, label, prefix, n, args.rounds)
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'row':<44} {'wall s':>7} {'CPU s':>7} {'CPU ms/file':>11}")
    for name, n, wall, cpu in rows:
        print(f"{name:<44} {wall:7.2f} {cpu:7.2f} {1000 * cpu / n:11.2f}")


if __name__ == "__main__":
    main()
