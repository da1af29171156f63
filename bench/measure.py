"""Run one child process and measure it: wall time, CPU and peak memory of that child alone.

CPU comes from `os.wait4`: the child's own user+sys time plus that of any descendants it waited
for, never the harness's. Peak RSS needs care: a child's `ru_maxrss` includes the memory of the
process it was forked from as it stood at `exec` (Linux records the old address space's
high-water mark), so a child forked from this ~130 MiB Python process would never report less
than that. The tool is therefore started through GNU time (`/usr/bin/time -f %M`), a ~2 MiB
process that forks it afresh and reports its `ru_maxrss`. `ru_maxrss` is per process, so a
multi-process tool would be under-counted: a sampler also sums the RSS of the whole process tree
at 20 Hz, and the larger of the two figures is reported. Without GNU time only the sampled figure
is available (it misses peaks shorter than 50 ms).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_PAGE = os.sysconf("SC_PAGE_SIZE")
_GNU_TIME = "/usr/bin/time"


def rss_method() -> str:
    """How peak RSS is measured on this machine, for the report."""
    if gnu_time():
        return "max(GNU time %M of the tool, process tree RSS sampled at 20 Hz)"
    return "process tree RSS sampled at 20 Hz (GNU time not found: peaks under 50 ms missed)"


@functools.cache
def gnu_time() -> str | None:
    try:
        out = subprocess.run([_GNU_TIME, "--version"], capture_output=True, text=True, check=False)
    except OSError:
        return None
    return _GNU_TIME if "GNU" in out.stdout + out.stderr else None


@dataclass(frozen=True)
class Measurement:
    """What one child run cost; `exit_code` is negative for a signal, None on timeout."""

    wall_s: float
    user_s: float
    sys_s: float
    maxrss_mib: float
    tree_rss_mib: float
    exit_code: int | None

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    @property
    def peak_rss_mib(self) -> float:
        return max(self.maxrss_mib, self.tree_rss_mib)


def run_measured(
    argv: Sequence[str], env: Mapping[str, str], log: Path, timeout_s: float
) -> Measurement:
    """Run `argv` to completion with its output in `log`; kill its process group on timeout."""
    stats = log.with_name(log.name + ".rss")
    wrapper = [gnu_time() or "", "-f", "%M", "-o", str(stats), "--"] if gnu_time() else []
    with log.open("wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [*wrapper, *argv],
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        sampler = _TreeSampler(proc.pid, skip_root=bool(wrapper))
        fired = threading.Event()
        timer = threading.Timer(timeout_s, _expire, (proc.pid, fired))
        sampler.start()
        timer.start()
        # Wait without reaping: while the child is a zombie its pid (our pgid) cannot be reused,
        # so killing leftovers of a tool that forked and exited early hits only its own group.
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        wall = time.perf_counter() - start
        timed_out = fired.is_set()
        timer.cancel()
        _kill_group(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
        sampler.stop()
    proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait() a reaped pid
    return Measurement(
        wall_s=wall,
        user_s=usage.ru_utime,
        sys_s=usage.ru_stime,
        maxrss_mib=_reported_rss_kib(stats) / 1024,
        tree_rss_mib=sampler.peak_bytes / 2**20,
        exit_code=None if timed_out else proc.returncode,
    )


def _reported_rss_kib(stats: Path) -> int:
    """GNU time's %M (KiB): the last line; a line before it may say how the command exited."""
    try:
        lines = stats.read_text().split()
        return int(lines[-1]) if lines else 0
    except (OSError, ValueError):
        return 0


def _expire(pgid: int, fired: threading.Event) -> None:
    fired.set()
    _kill_group(pgid)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class _TreeSampler:
    """Polls the summed RSS of a process and its descendants until stopped."""

    def __init__(self, root: int, skip_root: bool, interval_s: float = 0.05) -> None:
        self.root, self.skip_root, self.interval_s, self.peak_bytes = root, skip_root, interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            pids = _tree(self.root)[1:] if self.skip_root else _tree(self.root)
            total = sum(_rss_bytes(pid) for pid in pids)
            self.peak_bytes = max(self.peak_bytes, total)


def _tree(root: int) -> list[int]:
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(_children(pid))
    return pids


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            found.extend(int(c) for c in text.split())
    except OSError:
        pass
    return found


def _rss_bytes(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/statm").read_text().split()
    except OSError:
        return 0
    return int(fields[1]) * _PAGE


_TICK = os.sysconf("SC_CLK_TCK")
_PF_KTHREAD = 0x00200000


@dataclass(frozen=True)
class CpuClock:
    """CPU seconds used so far by the S3 server and by every other user process (by pid).

    "Other" processes are everything but the server, this harness (whose children's time is the
    tool's) and kernel threads; their CPU during a run is noise from outside the benchmark.
    A process's time includes that of children it reaped, so short-lived ones are counted too.
    """

    server_s: float
    others: dict[tuple[int, int], float]  # (pid, start time) -> CPU seconds

    @staticmethod
    def read(server_pid: int | None) -> CpuClock:
        skip = {os.getpid(), server_pid}
        stats = {pid: _proc_stat(pid) for pid in _pids()}
        others = {
            (pid, st[1]): st[0] for pid, st in stats.items() if st and pid not in skip and not st[2]
        }
        server = stats.get(server_pid) if server_pid else None
        return CpuClock(server[0] if server else 0.0, others)

    def other_since(self, before: CpuClock) -> float:
        return sum(cpu - before.others.get(key, 0.0) for key, cpu in self.others.items())


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _proc_stat(pid: int) -> tuple[float, int, bool] | None:
    """(utime+stime+cutime+cstime in seconds, start time, is a kernel thread)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    f = stat.rsplit(")", 1)[1].split()  # f[0] is field 3 (state)
    cpu = sum(int(x) for x in f[11:15]) / _TICK
    return cpu, int(f[19]), bool(int(f[6]) & _PF_KTHREAD)
