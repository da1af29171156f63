"""HTTP/1.1 framing of one ranged GET: the request bytes, the response head, and the check
that the answer is exactly the bytes asked for. Pure functions, no I/O (unit-tested alone)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from fetcher.errors import RangeMismatch, TransientSourceError
from fetcher.source.proxy import Proxy

MAX_HEAD = 64 << 10
MAX_ERROR_BODY = 64 << 10
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
    # Ask for S3's full-object checksums (the URL is signed for the header): S3 sends them
    # only for a GET of the whole object without Range, so such a GET sends none.
    checksums: bool = False

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    @property
    def ranged(self) -> bool:
        whole = self.start == 0 and self.end == self.size - 1
        return self.size > 0 and not (self.checksums and whole)


def request_bytes(req: RangeRequest, via: Proxy | None = None) -> bytes:
    parts = urlsplit(req.url)
    target = parts.path + ("?" + parts.query if parts.query else "")
    if via is not None:  # plain http through a proxy: the absolute form, as curl sends it
        target = f"{parts.scheme}://{parts.netloc}{target}"
    lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}", f"If-Match: {req.etag}"]
    if via is not None and via.authorization:
        lines.append(f"Proxy-Authorization: {via.authorization}")
    if req.checksums:
        lines.append("x-amz-checksum-mode: ENABLED")
    if req.ranged:
        lines.append(f"Range: bytes={req.start}-{req.end}")
    lines += ["User-Agent: model-fetcher", "Accept-Encoding: identity", "", ""]
    return "\r\n".join(lines).encode("latin-1")


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
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


def check_range(req: RangeRequest, status: int, headers: dict[str, str]) -> None:
    """The answer must be exactly the bytes asked for, of the object version pinned."""
    whole = req.start == 0 and (not req.size or req.end == req.size - 1)
    if status == 200 and not whole:
        # Before the length: "Content-Length 25165912, expected 8388608" hid the cause.
        raise RangeMismatch(
            f"{req.key}: the server did not honour Range requests (200 with the whole object "
            "instead of 206): is a proxy or gateway in front of S3 stripping Range?"
        )
    length = headers.get("content-length")
    if length is None or not length.isdigit():
        raise RangeMismatch(f"{req.key}: response without Content-Length")
    want_len = req.length if req.size else 0
    if int(length) != want_len:
        raise RangeMismatch(f"{req.key}: Content-Length {length}, expected {want_len}")
    if status == 200:
        return
    match = _CONTENT_RANGE.fullmatch(headers.get("content-range", ""))
    if not match or tuple(map(int, match.groups())) != (req.start, req.end, req.size):
        got = headers.get("content-range", "none")
        raise RangeMismatch(
            f"{req.key}: Content-Range {got}, expected bytes {req.start}-{req.end}/{req.size}"
        )
