"""The bulk byte path: ranged GETs on presigned URLs, read straight into a reusable buffer.

Why not aiobotocore's streaming body: on this 2-core machine a ranged-GET loop over
aiobotocore bodies reached ~460 MiB/s at ~2.0 CPU-s/GiB, while an `asyncio.BufferedProtocol`
on uvloop that fills a 1 MiB buffer and `pwrite`s it costs ~0.5-0.6 CPU-s/GiB (issue 7). The
server shares those cores, so client CPU is throughput. botocore still signs (presigned URLs),
lists and handles the control plane; this module only speaks the HTTP/1.1 of one GET.

    framing.py   request bytes, response head, the Content-Range check (pure)
    buffers.py   the two buffers of a connection and the order of their writes
    http.py      `_Conn`, one keep-alive connection as a state machine; `RangeGetter`, the pool

Each connection owns two buffers of BUF_SIZE bytes, and at most `concurrency` connections
exist, so memory is bounded by concurrency x 2 x BUF_SIZE whatever the model size.
"""

from __future__ import annotations

import asyncio
import enum
import socket
import ssl
from concurrent.futures import Executor, ThreadPoolExecutor
from functools import partial
from typing import cast
from urllib.parse import urlsplit

from fetcher.errors import FetchError, RangeMismatch, TransientSourceError
from fetcher.source.base import header_checksums
from fetcher.source.proxy import DIRECT, Proxy, ProxyRules
from fetcher.source.s3errors import s3_error_from_body
from fetcher.tls import DEFAULT_HINT, tls_context, tls_failure
from fetcher.transfer.buffers import BUF_SIZE, DoubleBuffer
from fetcher.transfer.framing import (
    MAX_ERROR_BODY,
    MAX_HEAD,
    RangeRequest,
    Sink,
    check_range,
    parse_head,
    request_bytes,
)
from fetcher.transfer.tunnel import connect_tunnel


class ConnState(enum.Enum):
    """Where a connection is in its current request.

    IDLE -> HEAD (request sent) -> BODY (206/200 head checked) -> DONE, or
                                -> ERROR (a non-2xx head: reading the error body) -> FAILED;
    any state -> FAILED on a protocol error, timeout, reset or failed write.
    """

    IDLE = "idle"
    HEAD = "head"
    BODY = "body"
    ERROR = "error"
    DONE = "done"
    FAILED = "failed"


class _Conn(asyncio.BufferedProtocol):
    """One keep-alive HTTP/1.1 connection; a small state machine over a fixed buffer."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, read_timeout: float, writer: Executor | None
    ) -> None:
        self.loop, self.read_timeout = loop, read_timeout
        self.out = DoubleBuffer(loop, writer, self._fail)
        self.paused = False
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.via: Proxy | None = None  # the forward proxy of plain-http requests, if any
        self._reset()

    @property
    def bufs(self) -> tuple[object, ...]:
        return self.out.bufs

    def _reset(self) -> None:
        self.state = ConnState.IDLE
        self.pos = 0  # bytes in the current buffer
        self.req: RangeRequest | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.remaining = 0  # body bytes not yet handed to the sink
        self.keep_alive = True
        self.status = 0
        self.headers: dict[str, str] = {}
        self.found: dict[str, str] | None = None  # gets S3's checksums, if the request asks

    # -- asyncio protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.state is ConnState.BODY:
            return self.out.view[self.pos : min(BUF_SIZE, self.remaining)]
        if self.pos >= BUF_SIZE:  # head or error body too large: drop, the check fails it
            self.pos = 0
        return self.out.view[self.pos :]

    def buffer_updated(self, nbytes: int) -> None:
        self.last_read = self.loop.time()
        self.pos += nbytes
        try:
            if self.state is ConnState.HEAD:
                self._on_head_bytes()
            elif self.state is ConnState.BODY:
                self._on_body_bytes(nbytes)
            elif self.state is ConnState.ERROR:
                self._on_error_bytes()
            else:
                self._fail(TransientSourceError("unexpected bytes on an idle connection"))
        except FetchError as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.state is ConnState.ERROR:
            self._finish_error()
        elif self.state in (ConnState.HEAD, ConnState.BODY):
            lost = TransientSourceError(self._lost_message(exc), reason=self._lost_reason(exc))
            self.out.after_write(partial(self._flush_and_fail, lost))

    # -- request ---------------------------------------------------------------------
    async def request(
        self, req: RangeRequest, sink: Sink, found: dict[str, str] | None = None
    ) -> None:
        """The body into `sink`; S3's full-object checksums into `found` as soon as the head
        arrives, if `req` asks for them (kept even if the body then fails)."""
        assert self.transport is not None
        self.req, self.state, self.found = req, ConnState.HEAD, found
        self.out.start(sink, req.start)
        if self.paused and not self.closed:
            self.paused = False
            self.transport.resume_reading()
        self.waiter = self.loop.create_future()
        self.last_read = self.loop.time()
        self._timer = self.loop.call_later(self.read_timeout, self._check_idle)
        try:
            self.transport.write(request_bytes(req, self.via))
            await self.waiter
        except asyncio.CancelledError:
            # The caller may close the file, or open another in its place under the same fd
            # number, once this returns: no write of ours may land after that.
            self._fail(TransientSourceError("cancelled", reason="cancelled"))
            await self.out.settle()
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
            self.out.after_write(partial(self._flush_and_fail, stalled))
        else:
            self._timer = self.loop.call_later(self.read_timeout - idle, self._check_idle)

    # -- response head -----------------------------------------------------------------
    def _on_head_bytes(self) -> None:
        buf, view = self.out.buf, self.out.view
        end = buf.find(b"\r\n\r\n", 0, self.pos)
        if end < 0:
            if self.pos >= MAX_HEAD:
                raise TransientSourceError("response head too large", reason="protocol")
            return
        self.status, self.headers = parse_head(bytes(view[:end]))
        if self.headers.get("connection", "").lower() == "close":
            self.keep_alive = False
        rest = self.pos - (end + 4)
        # bytes(): the ranges overlap, and mmap slice assignment is a plain memcpy.
        buf[:rest] = bytes(view[end + 4 : self.pos])
        self.pos = rest
        if self.status in (200, 206):
            self._start_body()
        else:
            self.state = ConnState.ERROR
            self._on_error_bytes()

    def _start_body(self) -> None:
        assert self.req is not None
        check_range(self.req, self.status, self.headers)
        # Only a whole-object answer carries the object's checksums; a resumed, ranged one
        # leaves what the first answer gave.
        if self.req.checksums and not self.req.ranged and self.found is not None:
            self.found.update(header_checksums(self.headers))
        self.remaining = self.req.length if self.req.size else 0
        self.state = ConnState.BODY
        if self.pos > self.remaining:
            raise RangeMismatch(f"{self.req.key}: more body bytes than Content-Length")
        self._on_body_bytes(self.pos)

    # -- body ------------------------------------------------------------------------
    def _on_body_bytes(self, nbytes: int) -> None:
        if self.pos >= self.remaining:
            # The last bytes: written after the one in flight, then the request completes.
            # Reading stops meanwhile: the buffer is full, and there is nothing more to read.
            if self.out.busy() and self.transport:
                self.transport.pause_reading()
                self.paused = True
            self.out.after_write(self._finish_body)
        elif self.pos >= BUF_SIZE:
            self._hand_off()

    def _flush_and_fail(self, exc: FetchError) -> None:
        self._flush()  # bytes already received count for the resume of the part
        self._fail(exc)

    def _finish_body(self) -> None:
        if self.state is not ConnState.BODY:
            return
        self._flush()
        self._complete()

    def _hand_off(self) -> None:
        """Give the full buffer to the writer thread and read on into the other one."""
        if not self.out.threaded:
            self._flush()
            return
        if self.out.busy():
            assert self.transport is not None
            self.transport.pause_reading()  # both buffers busy: let TCP push back
            self.paused = True
            self.out.when_written(self._resume)
            return
        if self.out.write_failed():
            return
        n, self.pos = self.pos, 0
        self.out.submit(n)
        self.remaining -= n

    def _resume(self) -> None:
        if self.state is not ConnState.BODY:
            return
        self._hand_off()
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def _flush(self) -> None:
        if self.state is not ConnState.BODY or self.pos == 0:
            return
        n, self.pos = self.pos, 0
        self.out.write_now(n)
        self.remaining -= n

    def _complete(self) -> None:
        self.state = ConnState.DONE
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
            or (chunked and self.out.buf.find(b"0\r\n\r\n", 0, self.pos) >= 0)
            or self.pos >= MAX_ERROR_BODY
        ):
            self._finish_error()

    def _finish_error(self) -> None:
        assert self.req is not None
        exc = s3_error_from_body(
            self.status, bytes(self.out.view[: self.pos]), f"GET s3 object {self.req.key}"
        )
        self.keep_alive = False  # error bodies may be framed oddly; never reuse the socket
        if self.transport is not None:
            self.transport.close()
        self._fail(exc)

    def _fail(self, exc: FetchError) -> None:
        if self.state is ConnState.FAILED:
            return
        self.state = ConnState.FAILED
        self.keep_alive = False
        if self.transport is not None and not self.closed:
            self.transport.abort()
            self.closed = True
        waiter = self.waiter

        def signal() -> None:
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)

        # The caller resumes the part at the bytes written: never before the last write lands.
        self.out.when_written(signal)

    def _lost_message(self, exc: Exception | None) -> str:
        key = self.req.key if self.req else "?"
        if self.state is ConnState.BODY:
            return f"{key}: body ended {self.remaining} bytes early ({exc or 'EOF'})"
        return f"{key}: connection closed before the response ({exc or 'EOF'})"

    def _lost_reason(self, exc: Exception | None) -> str:
        if exc is not None:
            return "reset"
        return "short_body" if self.state is ConnState.BODY else "reset"


class RangeGetter:
    """A small keep-alive pool of `_Conn`s per endpoint; at most `limit` connections idle."""

    def __init__(
        self,
        limit: int,
        connect_timeout: float,
        read_timeout: float,
        ssl_context: ssl.SSLContext | None,
        proxies: ProxyRules = DIRECT,
        tls_hint: str = DEFAULT_HINT,
    ) -> None:
        self.limit, self.tls_hint = limit, tls_hint
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.ssl_context, self.proxies = ssl_context, proxies
        self._idle: list[_Conn] = []
        # pwrite and the part hash release the GIL: threads overlap them with socket reads.
        self.writer = ThreadPoolExecutor(max_workers=min(limit, 8), thread_name_prefix="write")

    async def get(self, req: RangeRequest, sink: Sink, found: dict[str, str] | None = None) -> None:
        """The requested bytes into `sink`; S3's checksums into `found` if `req` asks."""
        conn = await self._acquire(req.url)
        try:
            await conn.request(req, sink, found)
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
        via = self.proxies.for_url(url)
        where = f"{host}:{port}" if via is None else f"{host}:{port} through proxy {via.netloc}"
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                conn = await self._open(loop, host, port, tls, via)
        except ssl.SSLError as exc:
            raise tls_failure(exc, f"{host}:{port}", self.tls_hint) from exc
        except TimeoutError as exc:
            raise TransientSourceError(
                f"connect to {where} timed out", reason="connect_timeout"
            ) from exc
        except (socket.gaierror, OSError) as exc:
            raise TransientSourceError(
                f"cannot connect to {where}: {exc.strerror or exc}", reason="connect"
            ) from exc
        sock = conn.transport.get_extra_info("socket") if conn.transport else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    async def _open(
        self, loop: asyncio.AbstractEventLoop, host: str, port: int, tls: bool, via: Proxy | None
    ) -> _Conn:
        """Directly; plain http to the proxy (requests in absolute form); or https through a
        CONNECT tunnel (tunnel.py), TLS end to end with the server."""

        def factory() -> _Conn:
            return _Conn(loop, self.read_timeout, self.writer)

        # Fail closed: an https URL never goes out without a verifying context.
        context = (self.ssl_context or tls_context(True, None)) if tls else None
        if via is None or not tls:
            _, conn = await loop.create_connection(
                factory,
                host if via is None else via.host,
                port if via is None else via.port,
                ssl=context,
                server_hostname=host if tls else None,
            )
            conn.via = via
            return conn
        sock = await connect_tunnel(loop, via, host, port)
        _, conn = await loop.create_connection(
            factory, sock=sock, ssl=context, server_hostname=host
        )
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


__all__ = ["BUF_SIZE", "ConnState", "RangeGetter", "RangeRequest", "Sink"]
