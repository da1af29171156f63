"""An HTTPS request through a forward proxy: `CONNECT host:port`, then TLS inside the tunnel.

The handshake runs on a bare non-blocking socket, which is then handed to
`loop.create_connection(sock=..., ssl=...)`: the byte path's protocol and its TLS are the same
as for a direct connection. Nothing is read past the proxy's answer, and the server sends
nothing before our ClientHello, so no byte of the tunnel can be lost in between.
"""

from __future__ import annotations

import asyncio
import socket

from fetcher.errors import SourceError, TransientSourceError
from fetcher.source.proxy import Proxy

_MAX_ANSWER = 16 << 10


async def connect_tunnel(
    loop: asyncio.AbstractEventLoop, via: Proxy, host: str, port: int
) -> socket.socket:
    """A socket connected through `via` to host:port; OSError if the proxy is unreachable."""
    family, kind, proto, _, address = (
        await loop.getaddrinfo(via.host, via.port, type=socket.SOCK_STREAM)
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, address)
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        if via.authorization:
            lines.append(f"Proxy-Authorization: {via.authorization}")
        await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        _check_answer(await _read_answer(loop, sock), via, target)
    except BaseException:
        sock.close()
        raise
    return sock


async def _read_answer(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    """The proxy's response head, read byte by byte: nothing after it may be consumed."""
    head = bytearray()
    while not head.endswith(b"\r\n\r\n"):
        byte = await loop.sock_recv(sock, 1)
        if not byte:
            raise TransientSourceError("the proxy closed the connection", reason="proxy")
        head += byte
        if len(head) > _MAX_ANSWER:
            raise TransientSourceError("the proxy's answer is too large", reason="proxy")
    return bytes(head)


def _check_answer(head: bytes, via: Proxy, target: str) -> None:
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    try:
        status = int(status_line.split(" ", 2)[1])
    except (IndexError, ValueError):
        raise TransientSourceError(
            f"proxy {via.netloc} answered CONNECT with {status_line!r}", reason="proxy"
        ) from None
    if 200 <= status < 300:
        return
    what = f"proxy {via.netloc} refused CONNECT to {target}: {status_line}"
    if status == 407:
        raise SourceError(f"{what} (give the proxy's user and password in HTTPS_PROXY)")
    if status >= 500:
        raise TransientSourceError(what, reason="proxy")
    raise SourceError(f"{what} (is the endpoint allowed by the proxy, or in NO_PROXY?)")
