"""FETCH_WORKERS: part downloads spread over several processes, one event loop each.

One event loop reads sockets, copies buffers into the page cache and hashes them on one core;
on a machine with many cores and a fast network that core is the ceiling. With FETCH_WORKERS=N
the parent keeps everything that needs state (listing, planning, journals, the final hash, the
commit) and hands each part to the least busy worker: a `python -m fetcher.workers` process
that imports neither botocore nor the cache state (it is given a presigned URL), writes the
part with `pwrite` into the parent's preallocated partial file, and answers with its hash.

Wire format, one JSON object per line: parent -> worker `{"id", "task", "path", "url"}` or
`{"cancel": id}`; worker -> parent `{"id", "digest"}` or `{"id", "error", "message", "reason"}`
(a cancelled task answers too, once its last write has landed), and hook events
`{"h": "b"|"r"|"q"|"i", "v": ...}` (bytes, retry, request seconds, in-flight delta).

A worker opens the partial file for each part and closes it after: the parent may discard a
file and create another under the same name (an object replaced mid-download), and a worker
holding descriptors across parts would write into the old one and keep one open per file.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from contextlib import suppress
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from fetcher import errors
from fetcher.cache import directio
from fetcher.cache.oserrors import os_errors
from fetcher.config import Config
from fetcher.errors import ChecksumMismatch, FetchError, TransientSourceError, WorkerLost
from fetcher.observe import log
from fetcher.source.proxy import proxies_from_json, proxies_to_json
from fetcher.tls import tls_context
from fetcher.transfer.http import RangeGetter
from fetcher.transfer.outage import SourceHealth
from fetcher.transfer.parts import Hooks, PartDownloader, PartTask

_LINE_LIMIT = 1 << 20


def split_limit(concurrency: int, workers: int) -> list[int]:
    """Each worker's share of FETCH_CONCURRENCY, summing to exactly it: the parent holds no
    semaphore over a worker's requests, so ceil(16 / 3) = 6 each would put 18 in flight."""
    workers = max(1, min(workers, concurrency))
    return [concurrency // workers + (i < concurrency % workers) for i in range(workers)]


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process, limit: int) -> None:
        self.proc, self.limit = proc, limit
        self.alive = True  # until its output ends
        self.busy = 0
        self.inflight = 0  # as its in-flight hook events say: undone if it dies mid-request
        self.pending: dict[int, asyncio.Future[str]] = {}
        self.reader: asyncio.Task[None] | None = None


class WorkerPool:
    def __init__(self, workers: list[_Worker], hooks: Hooks) -> None:
        self.workers, self.hooks = workers, hooks
        self._next_id = 0

    @classmethod
    async def start(cls, cfg: Config, hooks: Hooks) -> WorkerPool:
        limits = split_limit(cfg.concurrency, cfg.workers)
        settings = {
            "retries": cfg.retries,
            "outage_tolerance": cfg.outage_tolerance,
            "connect_timeout": cfg.connect_timeout,
            "read_timeout": cfg.read_timeout,
            "https": cfg.https,
            "tls_verify": cfg.tls_verify,
            "ca_bundle": cfg.ca_bundle,
            "proxies": proxies_to_json(cfg.proxies),
            "tls_hint": cfg.tls_hint,
            "log_format": cfg.log_format,
            "log_level": cfg.log_level,
            "direct_io": cfg.direct_io,
        }
        workers = []
        for limit in limits:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "fetcher.transfer.workers",
                json.dumps({**settings, "limit": limit}),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=_LINE_LIMIT,
            )
            workers.append(_Worker(proc, limit))
        pool = cls(workers, hooks)
        for worker in workers:
            worker.reader = asyncio.create_task(pool._read(worker))
        log.event(
            "workers",
            f"{len(workers)} worker processes, {'/'.join(map(str, limits))} requests each",
            workers=len(workers),
        )
        return pool

    async def download(self, task: PartTask, path: Path, url: str) -> str:
        """The part on the least busy worker; if that worker dies, the whole part again on a
        live one (its digest is of the new stream); with none left, WorkerLost (exit 5)."""
        while True:
            try:
                return await self._dispatch(task, path, url)
            except WorkerLost as exc:
                if not self.any_alive():
                    raise
                log.warning("worker_lost", f"{exc}; {task.rel} part {task.index} again")

    async def _dispatch(self, task: PartTask, path: Path, url: str) -> str:
        alive = [w for w in self.workers if w.alive]
        if not alive:
            raise WorkerLost("every worker process has exited (killed, or out of memory?)")
        worker = min(alive, key=lambda w: w.busy / w.limit)
        self._next_id += 1
        ident = self._next_id
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        worker.pending[ident] = future
        worker.busy += 1
        try:
            self._send(worker, {"id": ident, "task": asdict(task), "path": str(path), "url": url})
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # The caller may discard the file once this returns: the worker stops the part
            # and answers only after its last write has landed (or its output ends).
            self._send(worker, {"cancel": ident})
            await asyncio.wait([future])
            if not future.cancelled():
                future.exception()  # the answer of a cancelled part is not needed
            raise
        finally:
            worker.busy -= 1
            worker.pending.pop(ident, None)

    def _send(self, worker: _Worker, msg: dict[str, Any]) -> None:
        stdin = worker.proc.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.write(json.dumps(msg).encode() + b"\n")

    async def _read(self, worker: _Worker) -> None:
        assert worker.proc.stdout is not None
        async for raw in worker.proc.stdout:
            msg = json.loads(raw)
            if "h" in msg:
                if msg["h"] == "i":
                    worker.inflight += int(msg["v"])
                self._hook(msg["h"], msg["v"])
                continue
            future = worker.pending.get(msg["id"])
            if future is None or future.done():
                continue
            if "digest" in msg:
                future.set_result(msg["digest"])
            else:
                future.set_exception(_rebuild(msg))
        worker.alive = False
        if worker.inflight:
            self.hooks.on_inflight(-worker.inflight)  # its requests died with it
            worker.inflight = 0
        with suppress(TimeoutError):  # its output ends as it exits: reap it for the status
            await asyncio.wait_for(worker.proc.wait(), timeout=2)
        died = WorkerLost(f"worker process {worker.proc.pid} {_how_it_ended(worker.proc)}")
        for future in worker.pending.values():
            if not future.done():
                future.set_exception(died)

    def any_alive(self) -> bool:
        return any(w.alive for w in self.workers)

    def _hook(self, kind: str, value: Any) -> None:
        if kind == "b":
            self.hooks.on_bytes(int(value))
        elif kind == "r":
            self.hooks.on_retry(str(value))
        elif kind == "q":
            self.hooks.on_request(float(value))
        elif kind == "i":
            self.hooks.on_inflight(int(value))
        elif kind == "s":
            self.hooks.on_source(bool(value[0]), float(value[1]))
        elif kind == "c":
            self.hooks.on_checksum_failure(int(value))

    async def close(self, abort: bool = False) -> None:
        """Let idle workers exit; on failure or a stop signal, stop them at once (the parts
        they had in flight are not in the journal, so nothing is lost that counted)."""
        for worker in self.workers:
            if abort and worker.proc.returncode is None:
                worker.proc.terminate()
            elif worker.proc.stdin is not None and not worker.proc.stdin.is_closing():
                worker.proc.stdin.close()
        for worker in self.workers:
            try:
                await asyncio.wait_for(worker.proc.wait(), timeout=5)
            except TimeoutError:
                worker.proc.kill()
                await worker.proc.wait()
            if worker.reader is not None:
                worker.reader.cancel()


def _how_it_ended(proc: asyncio.subprocess.Process) -> str:
    code = proc.returncode
    if code is None:
        return "closed its output"
    if code < 0:
        return f"was killed by signal {-code} (out of memory?)"
    return f"exited with status {code}"


def _rebuild(msg: dict[str, Any]) -> FetchError:
    """The worker's error as the same class of our tree (its message carries no secret)."""
    cls = getattr(errors, str(msg.get("error")), FetchError)
    if not (isinstance(cls, type) and issubclass(cls, FetchError)):
        cls = FetchError
    if issubclass(cls, TransientSourceError):
        return TransientSourceError(msg["message"], reason=msg.get("reason") or "other")
    if issubclass(cls, ChecksumMismatch) and isinstance(msg.get("fields"), list):
        key, expected, actual, what = map(str, msg["fields"])
        return ChecksumMismatch(key, expected, actual, what=what)
    try:
        return cls(msg["message"])
    except TypeError:
        return FetchError(msg["message"])


# --- the worker process ---------------------------------------------------------------------


class _PipeHooks:
    """A worker's hooks: each event is one line to the parent."""

    def on_bytes(self, nbytes: int) -> None:
        _emit({"h": "b", "v": nbytes})

    def on_retry(self, reason: str) -> None:
        _emit({"h": "r", "v": reason})

    def on_request(self, seconds: float) -> None:
        _emit({"h": "q", "v": round(seconds, 6)})

    def on_inflight(self, delta: int) -> None:
        _emit({"h": "i", "v": delta})

    def on_source(self, up: bool, outage_seconds: float) -> None:
        _emit({"h": "s", "v": [up, outage_seconds]})

    def on_checksum_failure(self, nbytes: int) -> None:
        _emit({"h": "c", "v": nbytes})


_EMIT_LOCK = threading.Lock()  # hooks fire from the loop and from the writer threads


def _emit(msg: dict[str, Any]) -> None:
    line = json.dumps(msg, separators=(",", ":")) + "\n"
    with _EMIT_LOCK:
        sys.stdout.write(line)
        sys.stdout.flush()


async def _serve(settings: dict[str, Any]) -> None:
    # The parent's Config.https decided; the worker only builds the context it was told to.
    ctx = tls_context(settings["tls_verify"], settings["ca_bundle"]) if settings["https"] else None
    getter = RangeGetter(
        settings["limit"],
        settings["connect_timeout"],
        settings["read_timeout"],
        ctx,
        proxies_from_json(settings["proxies"]),
        settings["tls_hint"],
    )
    inflight = asyncio.Semaphore(settings["limit"])
    urls: dict[str, str] = {}

    async def url_for(key: str, checksums: bool) -> str:
        return urls[key]  # the parent presigned it (workers get no whole-object GETs)

    hooks = _PipeHooks()
    # Each worker process keeps its own outage state (its parts share it): one probe per
    # worker, not per part; the parent adds up the reported outage seconds.
    health = SourceHealth(settings["outage_tolerance"], hooks.on_source)
    parts = PartDownloader(getter, inflight, settings["retries"], url_for, hooks, health)
    tasks: dict[int, asyncio.Task[None]] = {}
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with asyncio.TaskGroup() as tg:
        async for raw in reader:
            msg = json.loads(raw)
            if "cancel" in msg:
                if (running := tasks.get(msg["cancel"])) is not None:
                    running.cancel()
                continue
            urls[msg["task"]["key"]] = msg["url"]
            task = tg.create_task(_one(parts, msg, settings["direct_io"]))
            tasks[msg["id"]] = task
            task.add_done_callback(partial(_forget, tasks, msg["id"]))
    getter.close()


async def _one(parts: PartDownloader, msg: dict[str, Any], direct_io: bool) -> None:
    path = msg["path"]
    fd, direct_fd = -1, None
    try:
        with os_errors("open", path):
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        direct_fd = directio.open_direct(path, os.O_WRONLY | os.O_NOFOLLOW) if direct_io else None

        def write(data: memoryview, offset: int) -> None:
            with os_errors("write", path):
                directio.pwrite_all(fd, direct_fd, data, offset)

        digest = await parts.download(PartTask(**msg["task"]), write)
        _emit({"id": msg["id"], "digest": digest})
    except FetchError as exc:
        _emit_error(msg["id"], exc)
    except asyncio.CancelledError:
        # Asked by the parent: the request has already waited for its write in flight.
        _emit_error(msg["id"], TransientSourceError("cancelled", reason="cancelled"))
    finally:
        for open_fd in (fd, direct_fd):
            if open_fd is not None and open_fd >= 0:
                os.close(open_fd)


def _forget(tasks: dict[int, asyncio.Task[None]], ident: int, task: asyncio.Task[None]) -> None:
    tasks.pop(ident, None)
    if task.cancelled():
        # Cancelled before its first step (the task and its cancel arrived in one read): `_one`
        # never ran, so nothing answered, and the parent waited for that answer forever
        # (test_object_replaced_mid_download_restarts_on_the_new_version hung 1 run in 2).
        _emit_error(ident, TransientSourceError("cancelled", reason="cancelled"))


def _emit_error(ident: int, exc: FetchError) -> None:
    _emit(
        {
            "id": ident,
            "error": type(exc).__name__,
            "message": str(exc),
            "reason": getattr(exc, "reason", None),
            **(
                {"fields": [exc.key, exc.expected, exc.actual, exc.what]}
                if isinstance(exc, ChecksumMismatch)
                else {}
            ),
        }
    )


def main() -> None:
    import uvloop

    settings = json.loads(sys.argv[1])
    log.setup(settings["log_format"], settings["log_level"])
    uvloop.run(_serve(settings))


if __name__ == "__main__":
    main()
