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
    """CPU seconds used so far: by the machine, the S3 server, kernel threads and this harness.

    CPU that other processes use during a run is what the machine used, less the tool (from
    wait4), the server, kernel threads (write-back, for instance) and the harness itself. Summing
    other processes one by one would not work: a process's reaped children are charged to it
    all at once, including time from before the run.
    """

    machine_s: float
    server_s: float
    kernel_s: float
    harness_s: float

    @staticmethod
    def read(server_pid: int | None) -> CpuClock:
        own = os.times()
        return CpuClock(
            machine_s=_machine_busy_s(),
            server_s=_process_cpu_s(server_pid) if server_pid else 0.0,
            kernel_s=_kernel_threads_cpu_s(),
            harness_s=own.user + own.system,
        )

    def other_since(self, before: CpuClock, tool_cpu_s: float) -> float:
        known = sum(
            now - then
            for now, then in [
                (self.server_s, before.server_s),
                (self.kernel_s, before.kernel_s),
                (self.harness_s, before.harness_s),
            ]
        )
        return max(0.0, self.machine_s - before.machine_s - known - tool_cpu_s)


def _machine_busy_s() -> float:
    """user, nice, system, irq, softirq: the ticks that are also charged to some process."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq = (int(f) for f in fields[:7])
    return (user + nice + system + irq + softirq) / _TICK


def _kernel_threads_cpu_s() -> float:
    total = 0
    for name in os.listdir("/proc"):
        fields = _stat_fields(int(name)) if name.isdigit() else []
        if fields and int(fields[6]) & _PF_KTHREAD:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat from field 3 (state) on; empty if the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _process_cpu_s(pid: int) -> float:
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / _TICK if fields else 0.0  # utime, stime
