"""The bulk byte path: ranged GETs on presigned URLs, read straight into a reusable buffer.

Why not aiobotocore's streaming body: on this 2-core machine a ranged-GET loop over
aiobotocore bodies reached ~460 MiB/s at ~2.0 CPU-s/GiB, while an `asyncio.BufferedProtocol`
on uvloop that fills a 1 MiB buffer and `pwrite`s it costs ~0.5-0.6 CPU-s/GiB (issue 7). The
server shares those cores, so client CPU is throughput. botocore still signs (presigned URLs),
lists and handles the control plane; this module only speaks the HTTP/1.1 of one GET.

Each connection owns two buffers of BUF_SIZE bytes, and at most `concurrency` connections
exist, so memory is bounded by concurrency x 2 x BUF_SIZE whatever the model size.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import cast
from urllib.parse import urlsplit

from fetcher.cache.directio import aligned_buffer
from fetcher.errors import (
    FetchError,
    RangeMismatch,
    SourceError,
    TransientSourceError,
)
from fetcher.source.s3errors import s3_error_from_body
from fetcher.tls import tls_context, tls_failure

# 2 MiB: half the thread hand-offs and wake-ups of 1 MiB; client CPU 0.44 -> 0.37 s/GiB, same
# run (issue 7). 16 connections x 2 buffers = 64 MiB, inside the 150 MiB RSS budget.
BUF_SIZE = 2 << 20
_MAX_HEAD = 64 << 10
_MAX_ERROR_BODY = 64 << 10
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")

# A sink receives each buffer-full of body bytes with the absolute object offset it starts at.
Sink = Callable[[memoryview, int], None]


@dataclass(frozen=True, slots=True)
class RangeRequest:
    url: str  # presigned GET
    key: str  # for messages only
    etag: str
    start: int
    end: int  # inclusive; for a zero-byte object, start=0 and end=-1 (no Range header)
    size: int  # the whole object's size, checked against Content-Range

    @property
    def length(self) -> int:
        return self.end - self.start + 1


class _Conn(asyncio.BufferedProtocol):
    """One keep-alive HTTP/1.1 connection; a small state machine over a fixed buffer."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, read_timeout: float, writer: Executor | None
    ) -> None:
        self.loop, self.read_timeout, self.writer = loop, read_timeout, writer
        # Two buffers: one fills from the socket while the other is written by a thread, so
        # the loop keeps draining sockets while the kernel's write path is slow.
        # Page-aligned (mmap) so a full buffer can be written with O_DIRECT (directio.py).
        self.bufs = (aligned_buffer(BUF_SIZE), aligned_buffer(BUF_SIZE))
        self.buf = self.bufs[0]
        self.view = memoryview(self.buf)
        self.writing: asyncio.Future[None] | None = None
        self._then: list[Callable[[], object]] = []
        self.paused = False
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self.state = "idle"
        self.pos = 0
        self.req: RangeRequest | None = None
        self.sink: Sink | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.remaining = 0
        self.offset = 0
        self.keep_alive = True
        self.status = 0
        self.headers: dict[str, str] = {}

    # -- asyncio protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.state == "body":
            return self.view[self.pos : min(BUF_SIZE, self.remaining)]
        if self.pos >= BUF_SIZE:  # head or error body too large: drop, the check fails it
            self.pos = 0
        return self.view[self.pos :]

    def buffer_updated(self, nbytes: int) -> None:
        self.last_read = self.loop.time()
        self.pos += nbytes
        try:
            if self.state == "head":
                self._on_head_bytes()
            elif self.state == "body":
                self._on_body_bytes(nbytes)
            elif self.state == "error":
                self._on_error_bytes()
            else:
                self._fail(TransientSourceError("unexpected bytes on an idle connection"))
        except FetchError as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.state == "error":
            self._finish_error()
        elif self.state in ("head", "body"):
            lost = TransientSourceError(self._lost_message(exc), reason=self._lost_reason(exc))
            self._after_write(partial(self._flush_and_fail, lost))

    # -- request ---------------------------------------------------------------------
    async def request(self, req: RangeRequest, sink: Sink) -> None:
        assert self.transport is not None
        self.req, self.sink, self.state = req, sink, "head"
        self.offset, self.writing, self._then = req.start, None, []
        if self.paused and not self.closed:
            self.paused = False
            self.transport.resume_reading()
        self.waiter = self.loop.create_future()
        self.last_read = self.loop.time()
        self._timer = self.loop.call_later(self.read_timeout, self._check_idle)
        try:
            self.transport.write(_request_bytes(req))
            await self.waiter
        except asyncio.CancelledError:
            # The caller may close the file, or open another in its place under the same fd
            # number, once this returns: no write of ours may land after that.
            self._fail(TransientSourceError("cancelled", reason="cancelled"))
            if self.writing is not None and not self.writing.done():
                await asyncio.wait([self.writing])
            raise
        finally:
            self._timer.cancel()
            self._reset()

    def _check_idle(self) -> None:
        if self.waiter is None or self.waiter.done():
            return
        if self.paused:
            # Reading stopped for our own writes (a slow disk), not for the source: not idle.
            self.last_read = self.loop.time()
        idle = self.loop.time() - self.last_read
        if idle >= self.read_timeout:
            stalled = TransientSourceError(
                f"no bytes for {self.read_timeout:g}s", reason="read_timeout"
            )
            self._after_write(partial(self._flush_and_fail, stalled))
        else:
            self._timer = self.loop.call_later(self.read_timeout - idle, self._check_idle)

    # -- response head -----------------------------------------------------------------
    def _on_head_bytes(self) -> None:
        end = self.buf.find(b"\r\n\r\n", 0, self.pos)
        if end < 0:
            if self.pos >= _MAX_HEAD:
                raise TransientSourceError("response head too large", reason="protocol")
            return
        self.status, self.headers = _parse_head(bytes(self.view[:end]))
        if self.headers.get("connection", "").lower() == "close":
            self.keep_alive = False
        rest = self.pos - (end + 4)
        # bytes(): the ranges overlap, and mmap slice assignment is a plain memcpy.
        self.buf[:rest] = bytes(self.view[end + 4 : self.pos])
        self.pos = rest
        if self.status in (200, 206):
            self._start_body()
        else:
            self.state = "error"
            self._on_error_bytes()

    def _start_body(self) -> None:
        assert self.req is not None
        _check_range(self.req, self.status, self.headers)
        self.remaining = self.req.length if self.req.size else 0
        self.state = "body"
        if self.pos > self.remaining:
            raise RangeMismatch(f"{self.req.key}: more body bytes than Content-Length")
        self._on_body_bytes(self.pos)

    # -- body ------------------------------------------------------------------------
    def _on_body_bytes(self, nbytes: int) -> None:
        if self.pos >= self.remaining:
            # The last bytes: written after the one in flight, then the request completes.
            # Reading stops meanwhile: the buffer is full, and there is nothing more to read.
            if self.writing is not None and not self.writing.done() and self.transport:
                self.transport.pause_reading()
                self.paused = True
            self._after_write(self._finish_body)
        elif self.pos >= BUF_SIZE:
            self._hand_off()

    def _flush_and_fail(self, exc: FetchError) -> None:
        self._flush()  # bytes already received count for the resume of the part
        self._fail(exc)

    def _finish_body(self) -> None:
        if self.state != "body":
            return
        self._flush()
        self._complete()

    def _hand_off(self) -> None:
        """Give the full buffer to the writer thread and read on into the other one."""
        if self.writer is None:
            self._flush()
            return
        if self.writing is not None and not self.writing.done():
            assert self.transport is not None
            self.transport.pause_reading()  # both buffers busy: let TCP push back
            self.paused = True
            self.writing.add_done_callback(lambda _: self._resume())
            return
        if self._write_failed():
            return
        assert self.sink is not None
        n, data, offset = self.pos, self.view[: self.pos], self.offset
        self.writing = self.loop.run_in_executor(self.writer, self.sink, data, offset)
        self.offset, self.remaining, self.pos = offset + n, self.remaining - n, 0
        self.buf = self.bufs[1] if self.buf is self.bufs[0] else self.bufs[0]
        self.view = memoryview(self.buf)

    def _resume(self) -> None:
        if self.state != "body":
            return
        self._hand_off()
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def _after_write(self, then: Callable[[], object]) -> None:
        """Run `then` once the write in flight is done, in the order asked (bytes stay in
        order for the hash, and the end of a body is never overtaken by a failure)."""
        self._then.append(then)
        if len(self._then) > 1:
            return  # a drain is already scheduled; it runs this one after the others
        if self.writing is not None and not self.writing.done():
            self.writing.add_done_callback(self._drain)
        else:
            self._drain(None)

    def _drain(self, _: object) -> None:
        while self._then:
            if self.writing is not None and not self.writing.done():
                # A write started since this drain was scheduled (`_resume` hands off the
                # next buffer first): the steps wait for it too.
                self.writing.add_done_callback(self._drain)
                return
            if self._write_failed():
                self._then.clear()
                return
            step = self._then[0]
            try:
                step()
            except Exception as exc:  # the last bytes, written here on the loop, failed
                self._then.clear()
                self._fail(exc if isinstance(exc, FetchError) else FetchError(repr(exc)))
                return
            self._then.pop(0)

    def _write_failed(self) -> bool:
        if self.writing is None or not self.writing.done() or self.writing.cancelled():
            return False
        exc = self.writing.exception()
        if exc is None:
            return False
        self.writing = None
        self._fail(exc if isinstance(exc, FetchError) else TransientSourceError(str(exc)))
        return True

    def _flush(self) -> None:
        if self.state != "body" or self.pos == 0:
            return
        assert self.sink is not None
        n, self.pos = self.pos, 0
        self.sink(self.view[:n], self.offset)
        self.offset += n
        self.remaining -= n

    def _complete(self) -> None:
        self.state = "done"
        if not self.keep_alive and self.transport is not None:
            self.transport.close()
            self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    # -- error responses ---------------------------------------------------------------
    def _on_error_bytes(self) -> None:
        length = self.headers.get("content-length")
        chunked = "chunked" in self.headers.get("transfer-encoding", "")
        if (
            (length is not None and self.pos >= int(length))
            or (chunked and self.buf.find(b"0\r\n\r\n", 0, self.pos) >= 0)
            or self.pos >= _MAX_ERROR_BODY
        ):
            self._finish_error()

    def _finish_error(self) -> None:
        assert self.req is not None
        exc = s3_error_from_body(
            self.status, bytes(self.view[: self.pos]), f"GET s3 object {self.req.key}"
        )
        self.keep_alive = False  # error bodies may be framed oddly; never reuse the socket
        if self.transport is not None:
            self.transport.close()
        self._fail(exc)

    def _fail(self, exc: FetchError) -> None:
        if self.state == "failed":
            return
        self.state = "failed"
        self.keep_alive = False
        if self.transport is not None and not self.closed:
            self.transport.abort()
            self.closed = True
        waiter = self.waiter

        def signal() -> None:
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)

        # The caller resumes the part at the bytes written: never before the last write lands.
        if self.writing is not None and not self.writing.done():
            self.writing.add_done_callback(lambda _: signal())
        else:
            signal()

    def _lost_message(self, exc: Exception | None) -> str:
        key = self.req.key if self.req else "?"
        if self.state == "body":
            return f"{key}: body ended {self.remaining} bytes early ({exc or 'EOF'})"
        return f"{key}: connection closed before the response ({exc or 'EOF'})"

    def _lost_reason(self, exc: Exception | None) -> str:
        if exc is not None:
            return "reset"
        return "short_body" if self.state == "body" else "reset"


def _request_bytes(req: RangeRequest) -> bytes:
    parts = urlsplit(req.url)
    target = parts.path + ("?" + parts.query if parts.query else "")
    lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}", f"If-Match: {req.etag}"]
    if req.size:
        lines.append(f"Range: bytes={req.start}-{req.end}")
    lines += ["User-Agent: model-fetcher", "Accept-Encoding: identity", "", ""]
    return "\r\n".join(lines).encode("latin-1")


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        raise TransientSourceError("malformed HTTP status line", reason="protocol") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def _check_range(req: RangeRequest, status: int, headers: dict[str, str]) -> None:
    """The answer must be exactly the bytes asked for, of the object version pinned."""
    length = headers.get("content-length")
    if length is None or not length.isdigit():
        raise RangeMismatch(f"{req.key}: response without Content-Length")
    want_len = req.length if req.size else 0
    if int(length) != want_len:
        raise RangeMismatch(f"{req.key}: Content-Length {length}, expected {want_len}")
    if status == 200:
        if req.start != 0 or (req.size and req.end != req.size - 1):
            raise RangeMismatch(f"{req.key}: server ignored the Range header")
        return
    match = _CONTENT_RANGE.fullmatch(headers.get("content-range", ""))
    if not match or tuple(map(int, match.groups())) != (req.start, req.end, req.size):
        got = headers.get("content-range", "none")
        raise RangeMismatch(
            f"{req.key}: Content-Range {got}, expected bytes {req.start}-{req.end}/{req.size}"
        )


class RangeGetter:
    """A small keep-alive pool of `_Conn`s per endpoint; at most `limit` connections idle."""

    def __init__(
        self,
        limit: int,
        connect_timeout: float,
        read_timeout: float,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.limit = limit
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.ssl_context = ssl_context
        self._idle: list[_Conn] = []
        # pwrite and the part hash release the GIL: threads overlap them with socket reads.
        self.writer = ThreadPoolExecutor(max_workers=min(limit, 8), thread_name_prefix="write")

    async def get(self, req: RangeRequest, sink: Sink) -> None:
        conn = await self._acquire(req.url)
        try:
            await conn.request(req, sink)
        except BaseException:
            self._discard(conn)
            raise
        self._release(conn)

    async def _acquire(self, url: str) -> _Conn:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        return await self._connect(url)

    async def _connect(self, url: str) -> _Conn:
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        host, port = parts.hostname or "", parts.port or (443 if tls else 80)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Conn(loop, self.read_timeout, self.writer),
                    host,
                    port,
                    # Fail closed: an https URL never goes out without a verifying context.
                    ssl=(self.ssl_context or tls_context(True, None)) if tls else None,
                    server_hostname=host if tls else None,
                )
        except ssl.SSLError as exc:
            raise tls_failure(exc, f"{host}:{port}") from exc
        except TimeoutError as exc:
            raise TransientSourceError(
                f"connect to {host}:{port} timed out", reason="connect_timeout"
            ) from exc
        except (socket.gaierror, OSError) as exc:
            raise TransientSourceError(
                f"cannot connect to {host}:{port}: {exc.strerror or exc}", reason="connect"
            ) from exc
        sock = conn.transport.get_extra_info("socket") if conn.transport else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _release(self, conn: _Conn) -> None:
        if conn.closed or not conn.keep_alive or len(self._idle) >= self.limit:
            self._discard(conn)
        else:
            self._idle.append(conn)

    def _discard(self, conn: _Conn) -> None:
        if conn.transport is not None and not conn.closed:
            conn.transport.abort()
        conn.closed = True

    def close(self) -> None:
        for conn in self._idle:
            self._discard(conn)
        self._idle.clear()
        self.writer.shutdown(wait=True)  # no write may land after the partial is closed


__all__ = ["BUF_SIZE", "RangeGetter", "RangeRequest", "Sink", "SourceError"]
