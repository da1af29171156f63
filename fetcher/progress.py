"""Progress people can read: JSON lines every few seconds in a pod, a live bar in a terminal."""

from __future__ import annotations

import asyncio
import time
from contextlib import suppress
from typing import Any

from . import log


class Progress:
    def __init__(self, total_bytes: int, total_files: int, interval: float, bar: bool) -> None:
        self.total, self.files_total = total_bytes, total_files
        self.done = 0
        self.files_done = 0
        self.interval = interval
        self.started = time.monotonic()
        self._bar: Any = _make_bar(total_bytes, total_files) if bar else None
        self._task: asyncio.Task[None] | None = None

    def add(self, nbytes: int) -> None:
        self.done += nbytes
        if self._bar is not None:
            self._bar.advance(nbytes)

    def resumed(self, nbytes: int) -> None:
        """Bytes a previous run left in a partial file: counted as done, not downloaded."""
        self.add(nbytes)

    def file_done(self, rel: str, size: int) -> None:
        self.files_done += 1
        log.event("file_done", f"fetched {rel}", file=rel, bytes=size)
        if self._bar is not None:
            self._bar.file_done(self.files_done)

    def rate(self) -> float:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        return self.done / elapsed

    def snapshot(self) -> dict[str, Any]:
        rate = self.rate()
        left = max(self.total - self.done, 0)
        return {
            "bytes_done": self.done,
            "bytes_total": self.total,
            "files_done": self.files_done,
            "files_total": self.files_total,
            "mib_per_s": round(rate / 2**20, 1),
            "eta_s": round(left / rate, 1) if rate > 0 else None,
        }

    async def __aenter__(self) -> Progress:
        if self._bar is not None:
            self._bar.start()
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
            pct = 100.0 * snap["bytes_done"] / self.total if self.total else 100.0
            log.event("progress", f"{pct:.0f}% at {snap['mib_per_s']} MiB/s", **snap)


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
            TransferSpeedColumn,
        )

        self.files = files
        self.progress = Progress(
            TextColumn("[bold]model"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[files]}"),
            console=Console(stderr=True),
            transient=False,
        )
        self.task = self.progress.add_task("fetch", total=total, files=f"0/{files} files")

    def start(self) -> None:
        self.progress.start()

    def stop(self) -> None:
        self.progress.stop()

    def advance(self, nbytes: int) -> None:
        self.progress.advance(self.task, nbytes)

    def file_done(self, done: int) -> None:
        self.progress.update(self.task, files=f"{done}/{self.files} files")


def _make_bar(total: int, files: int) -> _RichBar:
    return _RichBar(total, files)
