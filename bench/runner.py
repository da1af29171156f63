"""One measured run: a fresh destination, the tool as a child process, the hash check, clean-up.

Page cache policy, the same for every tool: the server's copy of the model stays in the page
cache (the warm-up round puts it there; with `--page-cache drop` every cache is dropped before
each run instead). Each run writes into a new empty directory; after the child exits the harness
times a `sync` (reported as "durable" throughput, since only model-fetcher fsyncs by itself),
hash-checks the files, deletes them and syncs again, so no run inherits another's dirty pages.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from bench.dataset import Uploaded, digest_tree
from bench.measure import CpuClock, Measurement, run_measured
from bench.tools import Source, Tool

FETCHER_STATE = ".fetcher"  # model-fetcher's own directory inside the destination
_DROP_CACHES = Path("/proc/sys/vm/drop_caches")
_LOG_TAIL = 15
_NCPU = os.cpu_count() or 1


@dataclass(frozen=True)
class Run:
    """One run of one tool, as recorded in the JSON file."""

    phase: str  # "model" or "startup"
    tool: str
    round: int
    warmup: bool
    bytes: int
    wall_s: float
    user_s: float
    sys_s: float
    cpu_s: float
    peak_rss_mib: float
    maxrss_mib: float
    tree_rss_mib: float
    sync_s: float
    server_cpu_s: float  # the S3 server's CPU during the run
    other_cpu_s: float  # other processes on the machine: noise
    other_cpu_share: float  # other_cpu_s over the machine's CPU capacity during the run
    exit_code: int | None
    ok: bool
    error: str | None
    attempt: int = 0
    discarded: bool = False  # disturbed by other processes, so run again

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    """What every run of a phase shares."""

    phase: str
    source: Source
    model: Uploaded
    workdir: Path
    timeout_s: float
    drop_caches: bool
    server_pid: int | None


def drop_caches_possible() -> bool:
    return os.access(_DROP_CACHES, os.W_OK)


def run_once(plan: Plan, tool: Tool, round_no: int, warmup: bool, attempt: int = 0) -> Run:
    name = f"{plan.phase}-r{round_no}-{_slug(tool.name)}" + (f"-a{attempt}" if attempt else "")
    dest, log = plan.workdir / "dest" / name, plan.workdir / "logs" / f"{name}.log"
    dest.mkdir(parents=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    _settle(plan.drop_caches)
    argv, env = tool.command(plan.source, dest)
    before = CpuClock.read(plan.server_pid)
    m = run_measured(argv, env, log, plan.timeout_s)
    after = CpuClock.read(plan.server_pid)
    sync_start = time.perf_counter()
    os.sync()
    sync_s = time.perf_counter() - sync_start
    error = _failure(m, plan, dest, log)
    shutil.rmtree(dest, ignore_errors=True)
    run = _record(plan, tool, round_no, warmup, m, sync_s, error, (before, after))
    return replace(run, attempt=attempt)


def _record(
    plan: Plan,
    tool: Tool,
    round_no: int,
    warmup: bool,
    m: Measurement,
    sync_s: float,
    error: str | None,
    clocks: tuple[CpuClock, CpuClock],
) -> Run:
    server_s = clocks[1].server_s - clocks[0].server_s
    other_s = clocks[1].other_since(clocks[0], m.cpu_s)
    return Run(
        phase=plan.phase,
        tool=tool.name,
        round=round_no,
        warmup=warmup,
        bytes=plan.model.total_bytes,
        wall_s=m.wall_s,
        user_s=m.user_s,
        sys_s=m.sys_s,
        cpu_s=m.cpu_s,
        peak_rss_mib=m.peak_rss_mib,
        maxrss_mib=m.maxrss_mib,
        tree_rss_mib=m.tree_rss_mib,
        sync_s=sync_s,
        server_cpu_s=server_s,
        other_cpu_s=other_s,
        other_cpu_share=other_s / (m.wall_s * _NCPU),
        exit_code=m.exit_code,
        ok=error is None,
        error=error,
    )


def _settle(drop: bool) -> None:
    os.sync()
    if drop:
        _DROP_CACHES.write_text("3\n")


def _failure(m: Measurement, plan: Plan, dest: Path, log: Path) -> str | None:
    if m.exit_code is None:
        return f"timed out after {plan.timeout_s:.0f}s; log: {log}\n{_tail(log)}"
    if m.exit_code != 0:
        return f"exit code {m.exit_code}; log: {log}\n{_tail(log)}"
    got = digest_tree(dest, exclude=[FETCHER_STATE])
    expected = plan.model.digests | {k: v for k, v in plan.model.optional.items() if k in got}
    return _compare(expected, got)


def _compare(expected: dict[str, str], got: dict[str, str]) -> str | None:
    missing = sorted(expected.keys() - got.keys())
    extra = sorted(got.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k])
    problems = [
        f"{label}: {', '.join(names)}"
        for label, names in (("missing", missing), ("unexpected", extra), ("wrong bytes", wrong))
        if names
    ]
    return "hash check failed: " + "; ".join(problems) if problems else None


def _tail(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in lines[-_LOG_TAIL:])


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")
