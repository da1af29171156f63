"""Progress people can read: JSON lines every few seconds in a pod, a live bar in a terminal."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from contextlib import suppress
from typing import IO, Any

from fetcher.observe import log


class Progress:
    def __init__(self, total_bytes: int, total_files: int, interval: float, bar: bool) -> None:
        self.total, self.files_total = total_bytes, total_files
        self.done = 0
        self._lock = threading.Lock()
        self.resumed_bytes = 0  # left by an earlier run: done, but not part of this run's rate
        self.files_done = 0
        self.interval = interval
        self.started = time.monotonic()
        self._bar: Any = _make_bar(total_bytes, total_files) if bar else None
        self._task: asyncio.Task[None] | None = None

    def add(self, nbytes: int) -> None:
        with self._lock:  # called from the writer threads
            self.done += nbytes
        if self._bar is not None:
            self._bar.advance(nbytes)

    def resumed(self, nbytes: int) -> None:
        """Bytes a previous run left in a partial file: counted as done, not downloaded."""
        self.resumed_bytes += nbytes
        self.add(nbytes)

    def file_done(self, rel: str, size: int, small: bool = False) -> None:
        """One file placed. A small file's line is a debug one: a compile cache's thousands
        of lines said nothing the periodic progress event does not, and each was a write and
        a wake-up of whoever reads the pod's log (1000 x 64 KiB: 1.19 -> 0.99 s, same run)."""
        self.files_done += 1
        level = logging.DEBUG if small else logging.INFO
        log.event("file_done", f"fetched {rel}", level, file=rel, bytes=size)
        if self._bar is not None:
            self._bar.file_done(self.files_done)

    def rate(self) -> float:
        """Bytes per second received by this run (resumed bytes would inflate it and the ETA)."""
        elapsed = max(time.monotonic() - self.started, 1e-6)
        return max(self.done - self.resumed_bytes, 0) / elapsed

    def fraction(self) -> float:
        """Done by bytes received and by files committed, whichever is behind: with many
        small files the bytes arrive long before the last file is verified and placed, and
        a bytes-only figure said `100% eta 0` for a minute (issue 14)."""
        by_bytes = self.done / self.total if self.total else 1.0
        if self.files_done >= self.files_total:
            return min(by_bytes, 1.0)
        # One file may be between its bytes and its commit without holding the figure back
        # (a single large shard shows its bytes); 100 % only once every file is placed.
        return min(by_bytes, (self.files_done + 1) / self.files_total, 0.99)

    def snapshot(self) -> dict[str, Any]:
        rate = self.rate()
        etas = []
        if rate > 0:
            etas.append(max(self.total - self.done, 0) / rate)
        if self.files_done:
            per_file = (time.monotonic() - self.started) / self.files_done
            etas.append((self.files_total - self.files_done) * per_file)
        return {
            "bytes_done": self.done,
            "bytes_total": self.total,
            "files_done": self.files_done,
            "files_total": self.files_total,
            "mib_per_s": round(rate / 2**20, 1),
            "eta_s": round(max(etas), 1) if etas else None,
        }

    async def __aenter__(self) -> Progress:
        if self._bar is not None:
            self._bar.start()
        # A live bar shows the same numbers; without a terminal (FETCH_PROGRESS=1 in a pod)
        # rich draws it once at the end, so the lines are still wanted.
        if self._bar is None or not self._bar.live:
            self._task = asyncio.create_task(self._report())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        if self._bar is not None:
            self._bar.stop()

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            snap = self.snapshot()
            pct, files = 100.0 * self.fraction(), f"{self.files_done}/{self.files_total} files"
            log.event("progress", f"{pct:.0f}% ({files}) at {snap['mib_per_s']} MiB/s", **snap)


class _RichBar:
    """A rich progress bar: bytes, rate, ETA and files (terminal only)."""

    def __init__(self, total: int, files: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.files = files
        self.progress = Progress(
            TextColumn("[bold]model"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            _binary_speed_column(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[files]}"),
            console=Console(stderr=True),
            transient=False,
        )
        self.task = self.progress.add_task("fetch", total=total, files=f"0/{files} files")
        self._rerouted: list[tuple[logging.StreamHandler[IO[str]], IO[str]]] = []

    @property
    def live(self) -> bool:
        return bool(self.progress.console.is_terminal)

    def start(self) -> None:
        stderr = sys.stderr
        self.progress.start()
        # While the bar is live, rich swaps sys.stderr for a proxy that prints above the bar;
        # the log handler still holds the real stream, and its lines would tear the bar.
        if sys.stderr is not stderr:
            for handler in logging.getLogger(log.NAME).handlers:
                if isinstance(handler, logging.StreamHandler) and handler.stream is stderr:
                    handler.setStream(sys.stderr)
                    self._rerouted.append((handler, stderr))

    def stop(self) -> None:
        for handler, stream in self._rerouted:
            handler.setStream(stream)
        self._rerouted.clear()
        self.progress.stop()

    def advance(self, nbytes: int) -> None:
        self.progress.advance(self.task, nbytes)

    def file_done(self, done: int) -> None:
        self.progress.update(self.task, files=f"{done}/{self.files} files")


def _make_bar(total: int, files: int) -> _RichBar | None:
    # Without a terminal rich would print the finished bar once, a plain line among the JSON
    # log lines; the periodic progress events say the same there.
    bar = _RichBar(total, files)
    return bar if bar.live else None


def _binary_speed_column() -> Any:
    from rich.filesize import pick_unit_and_suffix
    from rich.progress import ProgressColumn, Task
    from rich.text import Text

    class BinarySpeedColumn(ProgressColumn):
        """MiB/s, like the sizes beside it and the JSON lines (rich's own column says MB/s)."""

        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            if speed is None:
                return Text("?", style="progress.data.speed")
            units = ["B", "KiB", "MiB", "GiB", "TiB"]
            unit, suffix = pick_unit_and_suffix(int(speed), units, 1024)
            return Text(f"{speed / unit:.1f} {suffix}/s", style="progress.data.speed")

    return BinarySpeedColumn()
