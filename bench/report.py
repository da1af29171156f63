"""Medians, the stdout table, the JSON file and the PNG chart."""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.runner import Run

MIB, GIB = 2**20, 2**30


@dataclass(frozen=True)
class Summary:
    """One row of the table: medians over the measured (non-warm-up) runs of one tool."""

    tool: str
    status: str  # "ok" or "FAILED"
    runs: int
    mib_s: float
    mib_s_min: float
    mib_s_max: float
    durable_mib_s: float
    wall_s: float
    cpu_s: float
    cpu_s_per_gib: float
    cpu_s_per_gib_net: float | None  # minus the tool's own start-up CPU
    peak_rss_mib: float
    server_cpu_s_per_gib: float  # the S3 server's CPU while this tool ran
    other_cpu_share: float  # share of the machine's CPU used by anything else: noise
    error: str | None


def summarize(runs: Sequence[Run], startup: dict[str, Summary] | None = None) -> list[Summary]:
    order = list(dict.fromkeys(r.tool for r in runs))
    return [_summary(tool, [r for r in runs if r.tool == tool], startup or {}) for tool in order]


def _summary(tool: str, runs: list[Run], startup: dict[str, Summary]) -> Summary:
    failed = next((r for r in runs if not r.ok), None)
    kept = [r for r in runs if r.ok and not r.discarded]
    measured = [r for r in kept if not r.warmup] or kept
    if failed or not measured:
        error = failed.error if failed else "no successful run"
        return Summary(tool, "FAILED", 0, 0, 0, 0, 0, 0, 0, 0, None, 0, 0, 0, error)
    size = measured[0].bytes
    speeds = [size / MIB / r.wall_s for r in measured]
    cpu = statistics.median(r.cpu_s for r in measured)
    base = startup.get(tool)
    net = (cpu - base.cpu_s) / (size / GIB) if base and base.status == "ok" else None
    return Summary(
        tool=tool,
        status="ok",
        runs=len(measured),
        mib_s=statistics.median(speeds),
        mib_s_min=min(speeds),
        mib_s_max=max(speeds),
        durable_mib_s=statistics.median(size / MIB / (r.wall_s + r.sync_s) for r in measured),
        wall_s=statistics.median(r.wall_s for r in measured),
        cpu_s=cpu,
        cpu_s_per_gib=cpu / (size / GIB),
        cpu_s_per_gib_net=net,
        peak_rss_mib=max(r.peak_rss_mib for r in measured),
        server_cpu_s_per_gib=statistics.median(r.server_cpu_s for r in measured) / (size / GIB),
        other_cpu_share=statistics.median(r.other_cpu_share for r in measured),
        error=None,
    )


def model_table(rows: Sequence[Summary]) -> str:
    head = (
        "tool",
        "MiB/s",
        "min-max",
        "durable",
        "CPU-s/GiB",
        "net",
        "server",
        "RSS MiB",
        "status",
    )
    body = [
        (
            r.tool,
            f"{r.mib_s:.0f}",
            f"{r.mib_s_min:.0f}-{r.mib_s_max:.0f}",
            f"{r.durable_mib_s:.0f}",
            f"{r.cpu_s_per_gib:.2f}",
            _opt(r.cpu_s_per_gib_net),
            f"{r.server_cpu_s_per_gib:.2f}",
            f"{r.peak_rss_mib:.0f}",
            r.status,
        )
        if r.status == "ok"
        else (r.tool, "-", "-", "-", "-", "-", "-", "-", "FAILED")
        for r in rows
    ]
    return _grid(head, body)


def startup_table(rows: Sequence[Summary]) -> str:
    head = ("start-up (1 file, 1 KiB)", "wall s", "CPU s", "RSS MiB", "status")
    body = [
        (r.tool, f"{r.wall_s:.2f}", f"{r.cpu_s:.2f}", f"{r.peak_rss_mib:.0f}", r.status)
        if r.status == "ok"
        else (r.tool, "-", "-", "-", "FAILED")
        for r in rows
    ]
    return _grid(head, body)


def comparisons(rows: Sequence[Summary], runs: Sequence[Run] = ()) -> list[str]:
    """model-fetcher against each peer, and each fetcher variant against the default.

    With the runs, each line also gives the ratio round by round: tools run back to back in a
    round, so a round's ratio shares that moment's machine state (page-cache recycling, host
    noise) that moves every tool's median by up to 20 % between runs of the bench.
    """
    ok = {r.tool: r for r in rows if r.status == "ok"}
    base = ok.get("model-fetcher")
    if base is None:
        return []
    variants = [r for name, r in ok.items() if name.startswith("model-fetcher[")]
    peers = [r for name, r in ok.items() if not name.startswith("model-fetcher")]
    pairs = [(base, peer) for peer in peers] + [(v, base) for v in variants]
    return [_ratio(a, b) + _per_round(a.tool, b.tool, runs) for a, b in pairs]


def _ratio(a: Summary, b: Summary) -> str:
    speed, cpu = a.mib_s / b.mib_s, a.cpu_s_per_gib / b.cpu_s_per_gib
    return (
        f"{a.tool} vs {b.tool}: {speed:.2f}x the throughput, {cpu:.2f}x the CPU per GiB,"
        f" {a.peak_rss_mib / b.peak_rss_mib:.2f}x the peak RSS"
    )


def round_ratios(a: str, b: str, runs: Sequence[Run], durable: bool = False) -> list[float]:
    """Throughput of `a` over `b` in each measured round where both succeeded; `durable`
    counts each run's closing `sync` too (bytes on disk, the like-for-like figure)."""
    walls: dict[tuple[str, int], float] = {
        (r.tool, r.round): r.wall_s + (r.sync_s if durable else 0.0)
        for r in runs
        if r.phase == "model" and r.ok and not r.discarded and not r.warmup
    }
    rounds = sorted({n for tool, n in walls if tool == a} & {n for tool, n in walls if tool == b})
    return [walls[(b, n)] / walls[(a, n)] for n in rounds]


def _per_round(a: str, b: str, runs: Sequence[Run]) -> str:
    ratios = round_ratios(a, b, runs)
    if not ratios:
        return ""
    durable = round_ratios(a, b, runs, durable=True)
    return f"; round by round: throughput {_listed(ratios)}, durable {_listed(durable)}"


def _listed(values: Sequence[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in values)


def noise_warning(rows: Sequence[Summary], limit: float, min_wall_s: float) -> str | None:
    noisy = [
        r for r in rows if r.status == "ok" and r.other_cpu_share > limit and r.wall_s >= min_wall_s
    ]
    if not noisy:
        return None
    shares = ", ".join(f"{r.tool} {r.other_cpu_share:.0%}" for r in noisy)
    return (
        f"warning: other processes used a noticeable share of the CPU during the runs of {shares}"
        " (median); these figures are disturbed: rerun on a quiet machine"
    )


def failures(rows: Sequence[Summary]) -> str:
    return "\n".join(f"FAILED {r.tool}: {r.error}" for r in rows if r.status != "ok")


def _opt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _grid(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = [_line(head, widths), "  ".join("-" * w for w in widths)]
    return "\n".join(lines + [_line(row, widths) for row in body])


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    first = cells[0].ljust(widths[0])
    rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
    return "  ".join([first, *rest]).rstrip()


def write_json(path: Path, document: dict[str, object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(value: object) -> object:
    if isinstance(value, Summary):
        return asdict(value)
    if isinstance(value, Run):
        return value.to_json()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
