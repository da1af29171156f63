"""The PNG bar chart: throughput (with min-max), CPU per GiB and peak RSS, one bar per tool."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: the harness runs headless
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from bench.report import Summary


def write_chart(path: Path, rows: Sequence[Summary], title: str) -> None:
    ok = [r for r in rows if r.status == "ok"]
    failed = [r.tool for r in rows if r.status != "ok"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 1.6 + 0.55 * max(len(ok), 1)), sharey=True)
    names = [r.tool for r in ok]
    _panel(
        axes[0],
        names,
        [r.mib_s for r in ok],
        "median MiB/s (bar), min-max (whisker)",
        errors=_whiskers(ok),
    )
    _panel(axes[1], names, [r.cpu_s_per_gib for r in ok], "client CPU-s per GiB (lower is better)")
    _panel(axes[2], names, [r.peak_rss_mib for r in ok], "peak RSS MiB (lower is better)")
    axes[0].invert_yaxis()  # the y axis is shared: the first tool on top, in all three panels
    note = f"   FAILED (excluded): {', '.join(failed)}" if failed else ""
    fig.suptitle(title + note, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _whiskers(rows: Sequence[Summary]) -> list[list[float]]:
    return [[r.mib_s - r.mib_s_min for r in rows], [r.mib_s_max - r.mib_s for r in rows]]


def _panel(
    ax: Axes,
    names: list[str],
    values: list[float],
    label: str,
    errors: list[list[float]] | None = None,
) -> None:
    colors = ["#d9822b" if n.startswith("model-fetcher") else "#4878a8" for n in names]
    bars = ax.barh(names, values, xerr=errors, capsize=3, color=colors)
    ax.bar_label(bars, fmt="%.2f" if max(values, default=0) < 10 else "%.0f", padding=4)
    ax.set_xlabel(label)
    ax.margins(x=0.2)
