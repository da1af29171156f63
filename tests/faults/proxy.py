"""A small HTTP/1.1 reverse proxy that counts requests and injects faults, for tests.

It runs its own event loop in a daemon thread, so blocking test code (boto3) and the fetcher's own
event loop can both talk to it. Bytes pass through unchanged, the Host header included: clients
sign requests (SigV4 headers, presigned URLs) for the proxy's host:port, and the server checks
the signature against the Host it receives. Only enough HTTP is parsed to find where each message
ends; body offsets in faults and counters are payload bytes (chunk framing excluded).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import http
import ipaddress
import itertools
import re
import socket
import struct
import termios
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal

PIECE = 64 * 1024
CHUNKED: Literal["chunked"] = "chunked"
# How a body ends: a byte count, chunked encoding, or None for "when the server closes".
Framing = int | Literal["chunked"] | None


@dataclass(frozen=True)
class ResetAfter:
    """Send the response head and `nbytes` of body, then reset the client connection (RST)."""

    nbytes: int


@dataclass(frozen=True)
class Stall:
    """Send the head and `after` bytes of body, go silent for `seconds`, then close."""

    seconds: float
    after: int = 64 * 1024


@dataclass(frozen=True)
class Status:
    """Answer with an S3 XML error without contacting the server."""

    code: int
    s3_code: str = "InternalError"
    message: str = "Injected by the fault proxy"


@dataclass(frozen=True)
class Truncate:
    """Send the head unchanged (original Content-Length) but only `nbytes` of body, then FIN."""

    nbytes: int


@dataclass(frozen=True)
class WrongContentRange:
    """Shift the Content-Range start and end by `shift` (if there is one); the body is real."""

    shift: int = 1


@dataclass(frozen=True)
class FlipByte:
    """Flip the lowest bit of the body byte at `offset`."""

    offset: int = 0


@dataclass(frozen=True)
class Throttle:
    """Relay the body unchanged but no faster than `bytes_per_s` (a slow, steady link)."""

    bytes_per_s: float


@dataclass(frozen=True)
class Callback:
    """Call `fn()` in a worker thread before the request goes upstream, then forward it."""

    fn: Callable[[], object]


@dataclass(frozen=True)
class RewriteBody:
    """Buffer the whole (small) response body and send `fn(body)` with a fixed Content-Length."""

    fn: Callable[[bytes], bytes]


@dataclass(frozen=True)
class DropHeader:
    """Forward the request without header `name` (a server or middlebox that ignores Range)."""

    name: str


Action = (
    ResetAfter
    | Stall
    | Status
    | Truncate
    | WrongContentRange
    | FlipByte
    | Callback
    | RewriteBody
    | Throttle
    | DropHeader
)


@dataclass
class Record:
    """One request seen by the proxy; `status` and `body_bytes` fill in as the response goes out."""

    conn: int  # serial number of the client connection: equal values mean keep-alive reuse
    method: str
    path: str
    query: str
    headers: dict[str, str]  # request headers, lower-case names
    fault: Action | None = None
    status: int | None = None
    body_bytes: int = 0  # response payload bytes sent to the client

    @property
    def ranged(self) -> bool:
        return "range" in self.headers

    @property
    def range(self) -> str | None:
        return self.headers.get("range")

    @property
    def if_match(self) -> str | None:
        return self.headers.get("if-match")


@dataclass
class Fault:
    """An action for the requests that match; `times=None` means every match, forever."""

    action: Action
    method: str | None = None
    path_contains: str | None = None
    ranged: bool | None = None
    times: int | None = 1
    skip: int = 0
    seen: int = 0
    applied: int = 0

    def take(self, record: Record) -> bool:
        """Count a request against this fault; True when the action applies to it."""
        if not self._matches(record) or (self.times is not None and self.applied >= self.times):
            return False
        self.seen += 1
        if self.seen <= self.skip:
            return False
        self.applied += 1
        return True

    def _matches(self, record: Record) -> bool:
        return _matches(record, self.method, self.path_contains, self.ranged)


def _matches(
    record: Record, method: str | None, path_contains: str | None, ranged: bool | None
) -> bool:
    return (
        (method is None or method.upper() == record.method)
        and (path_contains is None or path_contains in record.path)
        and (ranged is None or ranged == record.ranged)
    )


@dataclass
class _Head:
    raw: bytes
    first: str
    headers: list[tuple[str, str]]

    @classmethod
    def parse(cls, raw: bytes) -> _Head:
        first, *lines = raw.decode("latin-1").split("\r\n")
        pairs = [line.split(":", 1) for line in lines if line]
        return cls(raw, first, [(name.strip(), value.strip()) for name, value in pairs])

    def get(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)

    @property
    def status(self) -> int:
        return int(self.first.split()[1])

    def rebuilt(self, headers: list[tuple[str, str]]) -> _Head:
        text = "".join(f"{k}: {v}\r\n" for k, v in headers)
        return _Head(f"{self.first}\r\n{text}\r\n".encode("latin-1"), self.first, headers)


@dataclass
class _Upstream:
    """The server connection that belongs to one client connection, opened on first use."""

    host: str
    port: int
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None

    async def ensure(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.reader is None or self.writer is None or self.reader.at_eof():
            self.close()
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self.reader, self.writer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class FaultProxy:
    """Reverse proxy on 127.0.0.1:<free port> in front of a loopback S3 server."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        if upstream_host != "localhost" and not ipaddress.ip_address(upstream_host).is_loopback:
            raise ValueError(f"the fault proxy only forwards to loopback, not {upstream_host}")
        self._upstream = (upstream_host, upstream_port)
        self._lock = threading.Lock()
        self._records: list[Record] = []
        self._faults: list[Fault] = []
        self._conn_ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None or not self.port:
            raise RuntimeError("the fault proxy did not start") from self._error
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Scripting and counting, from any thread.

    def add_fault(self, fault: Fault | Action, **match: object) -> Fault:
        """Add `Fault(...)`, or an action with matcher keywords (method=, path_contains=, ...)."""
        if not isinstance(fault, Fault):
            fault = Fault(fault, **match)  # type: ignore[arg-type]
        with self._lock:
            self._faults.append(fault)
        return fault

    @property
    def requests(self) -> list[Record]:
        with self._lock:
            return list(self._records)

    def count(
        self,
        method: str | None = None,
        path_contains: str | None = None,
        ranged: bool | None = None,
    ) -> int:
        return sum(1 for r in self.requests if _matches(r, method, path_contains, ranged))

    def bytes_sent(self, path_contains: str | None = None) -> int:
        """Response payload bytes sent to clients, for paths containing `path_contains`."""
        return sum(r.body_bytes for r in self.requests if _matches(r, None, path_contains, None))

    def reset(self) -> None:
        """Forget recorded requests and remove all faults."""
        with self._lock:
            self._records.clear()
            self._faults.clear()

    # The event loop thread.

    async def _main(self) -> None:
        try:
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
        except BaseException as e:
            self._error = e
            raise
        finally:
            self._ready.set()
        await self._stopping.wait()
        server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn, upstream = next(self._conn_ids), _Upstream(*self._upstream)
        try:
            while await self._exchange(conn, reader, writer, upstream):
                pass
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # a peer went away or sent something unparsable: drop the connection
        except asyncio.CancelledError:
            pass  # stop(); 3.11's start_server calls task.exception(), which raises if cancelled
        finally:
            upstream.close()
            writer.close()
            self._tasks.discard(task)

    async def _exchange(
        self,
        conn: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: _Upstream,
    ) -> bool:
        """Relay one request and its response; True when the client connection stays open."""
        raw = await _read_head(reader)
        if raw is None:
            return False
        req = _Head.parse(raw)
        record = self._record(conn, req)
        if isinstance(record.fault, Status):
            return await self._answer(record.fault, req, record, reader, writer)
        if isinstance(record.fault, Callback):
            await asyncio.to_thread(record.fault.fn)
        if isinstance(record.fault, DropHeader):
            name = record.fault.name.lower()
            raw = req.rebuilt([(k, v) for k, v in req.headers if k.lower() != name]).raw
        up_reader, up_writer = await upstream.ensure()
        up_writer.write(raw)
        sending = asyncio.create_task(_pipe(reader, up_writer, _request_framing(req)))
        try:
            resp = await _final_head(up_reader, writer)
            keep = await self._respond(record, resp, up_reader, writer)
        finally:
            body_sent = await _settle(sending)
        return keep and body_sent and _keep_alive(req) and _keep_alive(resp)

    def _record(self, conn: int, req: _Head) -> Record:
        method, target = req.first.split()[:2]
        path, _, query = target.partition("?")
        headers = {k.lower(): v for k, v in req.headers}
        record = Record(conn, method, path, query, headers)
        with self._lock:
            self._records.append(record)
            record.fault = next((f.action for f in self._faults if f.take(record)), None)
        return record

    async def _answer(
        self,
        action: Status,
        req: _Head,
        record: Record,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        # A client waiting for 100 Continue never sends the body; any other sent it, so read it
        # to keep the connection in step for the next request.
        waiting = (req.get("expect") or "").lower() == "100-continue"
        if not waiting:
            async for _ in _iter_body(reader, _request_framing(req)):
                pass
        body = _error_xml(action, record.path)
        head = (
            f"HTTP/1.1 {action.code} {_reason(action.code)}\r\n"
            f"Content-Type: application/xml\r\nContent-Length: {len(body)}\r\n"
            f"x-amz-request-id: fault-proxy\r\n"
            f"Connection: {'close' if waiting else 'keep-alive'}\r\n\r\n"
        )
        if record.method == "HEAD":
            body = b""
        record.status = action.code
        record.body_bytes += len(body)
        writer.write(head.encode() + body)
        await writer.drain()
        return not waiting

    async def _respond(
        self,
        record: Record,
        resp: _Head,
        up_reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        action, framing = record.fault, _response_framing(record.method, resp)
        record.status = resp.status
        if isinstance(action, RewriteBody):
            await _rewrite(action, resp, _iter_body(up_reader, framing), writer, record)
            return True
        if isinstance(action, WrongContentRange):
            resp = _shift_range(resp, action.shift)
        writer.write(resp.raw)
        limit = _body_limit(action)
        flip = action.offset if isinstance(action, FlipByte) else None
        rate = action.bytes_per_s if isinstance(action, Throttle) else None
        await _send_body(_iter_body(up_reader, framing), writer, record, limit, flip, rate)
        if isinstance(action, ResetAfter | Stall | Truncate):
            await _hang_up(action, writer)
            return False
        return framing is not None


# Message framing.


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if e.partial:
            raise
        return None  # the peer closed between messages


async def _final_head(up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> _Head:
    """The response head, after relaying interim ones such as `100 Continue`."""
    while True:
        head = _Head.parse(await up_reader.readuntil(b"\r\n\r\n"))
        if head.status >= 200:
            return head
        writer.write(head.raw)
        await writer.drain()


def _is_chunked(head: _Head) -> bool:
    return "chunked" in (head.get("transfer-encoding") or "").lower()


def _keep_alive(head: _Head) -> bool:
    return "close" not in (head.get("connection") or "").lower()


def _request_framing(req: _Head) -> Framing:
    return CHUNKED if _is_chunked(req) else int(req.get("content-length") or 0)


def _response_framing(method: str, resp: _Head) -> Framing:
    if method == "HEAD" or resp.status in (204, 304):
        return 0
    if _is_chunked(resp):
        return CHUNKED
    length = resp.get("content-length")
    return None if length is None else int(length)


async def _iter_body(
    reader: asyncio.StreamReader, framing: Framing
) -> AsyncIterator[tuple[bytes, bool]]:
    """The body's wire bytes as (piece, is_payload): chunk sizes and trailers are not payload."""
    if framing != CHUNKED:
        async for piece in _iter_sized(reader, framing):
            yield piece, True
        return
    while size := int((line := await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        yield line, False
        async for piece in _iter_sized(reader, size):
            yield piece, True
        yield await reader.readexactly(2), False
    yield line, False
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
        yield line, False
    yield line, False


async def _iter_sized(reader: asyncio.StreamReader, size: int | None) -> AsyncIterator[bytes]:
    """`size` bytes, or everything up to EOF when size is None."""
    while size is None or size > 0:
        piece = await reader.read(PIECE if size is None else min(PIECE, size))
        if not piece:
            if size is None:
                return
            raise asyncio.IncompleteReadError(b"", size)
        if size is not None:
            size -= len(piece)
        yield piece


async def _settle(sending: asyncio.Task[None]) -> bool:
    """True when the request body went upstream in full; else the connection is out of step."""
    # The server may answer without reading the body (an error, or no 100 Continue).
    await asyncio.wait({sending}, timeout=0.1)
    if not sending.done():
        sending.cancel()
        return False
    return not sending.cancelled() and sending.exception() is None


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, framing: Framing
) -> None:
    async for piece, _ in _iter_body(reader, framing):
        writer.write(piece)
        await writer.drain()


# Response actions.


def _body_limit(action: Action | None) -> int | None:
    if isinstance(action, ResetAfter | Truncate):
        return action.nbytes
    if isinstance(action, Stall):
        return action.after
    return None


async def _send_body(
    pieces: AsyncIterator[tuple[bytes, bool]],
    writer: asyncio.StreamWriter,
    record: Record,
    limit: int | None,
    flip: int | None,
    rate: float | None = None,
) -> None:
    sent = 0
    if limit == 0:
        return
    began = time.monotonic()
    async for piece, payload in pieces:
        if payload:
            if flip is not None and 0 <= flip - sent < len(piece):
                piece = _flip(piece, flip - sent)
            if limit is not None:
                piece = piece[: limit - sent]
            sent += len(piece)
            record.body_bytes += len(piece)
        writer.write(piece)
        await writer.drain()
        if limit is not None and sent >= limit:
            return
        if rate is not None:
            # Pace against the start of the body, so the average holds whatever the piece sizes.
            await asyncio.sleep(max(0.0, began + sent / rate - time.monotonic()))


def _flip(piece: bytes, index: int) -> bytes:
    changed = bytearray(piece)
    changed[index] ^= 0x01
    return bytes(changed)


def _shift_range(resp: _Head, shift: int) -> _Head:
    def shifted(value: str) -> str:
        m = re.fullmatch(r"bytes (\d+)-(\d+)/(\S+)", value)
        return f"bytes {int(m[1]) + shift}-{int(m[2]) + shift}/{m[3]}" if m else value

    return resp.rebuilt(
        [(k, shifted(v) if k.lower() == "content-range" else v) for k, v in resp.headers]
    )


async def _rewrite(
    action: RewriteBody,
    resp: _Head,
    pieces: AsyncIterator[tuple[bytes, bool]],
    writer: asyncio.StreamWriter,
    record: Record,
) -> None:
    body = action.fn(b"".join([piece async for piece, payload in pieces if payload]))
    framing = ("content-length", "transfer-encoding")
    kept = [(k, v) for k, v in resp.headers if k.lower() not in framing]
    writer.write(resp.rebuilt([*kept, ("Content-Length", str(len(body)))]).raw + body)
    record.body_bytes += len(body)
    await writer.drain()


async def _hang_up(action: ResetAfter | Stall | Truncate, writer: asyncio.StreamWriter) -> None:
    if isinstance(action, ResetAfter):
        await _reset(writer)
        return
    await writer.drain()
    if isinstance(action, Stall):
        await asyncio.sleep(action.seconds)
    writer.close()  # FIN once the buffer is flushed


async def _reset(writer: asyncio.StreamWriter) -> None:
    """Abort with RST once the bytes already written have reached the client."""
    writer.transport.set_write_buffer_limits(0)
    await writer.drain()
    sock = writer.get_extra_info("socket")
    # An RST discards what still sits in the kernel's send queue; wait (briefly) for it to drain
    # so the client sees exactly the bytes promised before the reset.
    deadline = time.monotonic() + 1.0
    while _unsent(sock) and time.monotonic() < deadline:  # noqa: ASYNC110 - no event to await
        await asyncio.sleep(0.005)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _unsent(sock: socket.socket) -> int:
    with contextlib.suppress(OSError):
        out = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        return int(struct.unpack("i", out)[0])
    return 0


def _reason(code: int) -> str:
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:
        return "Error"


def _error_xml(action: Status, resource: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{action.s3_code}</Code><Message>{action.message}</Message>"
        f"<Resource>{resource}</Resource><RequestId>fault-proxy</RequestId></Error>"
    ).encode()
