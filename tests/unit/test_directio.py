"""fetcher.directio: the bytes on disk are the bytes written, whatever the alignment, with and
without O_DIRECT; reads give back exactly what was asked; no O_DIRECT means no second fd."""

from __future__ import annotations

import fcntl
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from fetcher.cache import directio
from fetcher.cache.directio import ALIGN, aligned_buffer, open_direct, pread_into, pwrite_all
from fetcher.cache.store import Cache
from fetcher.verify.hashes import composite_xxh3, file_digest, xxh3_range

SIZE = 3 * 1024 * 1024 + 777


@pytest.fixture(params=["direct", "buffered"])
def fds(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, int | None]]:
    path = tmp_path / "f.part"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    os.posix_fallocate(fd, 0, SIZE)
    direct = open_direct(path, os.O_RDWR) if request.param == "direct" else None
    if request.param == "direct" and direct is None:
        pytest.skip(f"{tmp_path} does not support O_DIRECT")
    yield fd, direct
    os.close(fd)
    if direct is not None:
        os.close(direct)


def chunks(rng: random.Random) -> Iterator[tuple[int, int]]:
    """(offset, length) pairs covering [0, SIZE): aligned 1 MiB buffers, odd sizes, tiny bits."""
    offset = 0
    for length in [1 << 20, ALIGN + 1, 3, 1 << 20, 2 * ALIGN, 5000]:
        yield offset, length
        offset += length
    while offset < SIZE:
        length = min(rng.choice([1, 511, ALIGN, 70000, 1 << 20]), SIZE - offset)
        yield offset, length
        offset += length


def test_pwrite_all_puts_every_byte_at_its_offset(fds: tuple[int, int | None]) -> None:
    fd, direct = fds
    want = os.urandom(SIZE)
    buf = aligned_buffer(1 << 20)
    pieces = list(chunks(random.Random(7)))
    random.Random(8).shuffle(pieces)  # parts land in any order
    for offset, length in pieces:
        buf[:length] = want[offset : offset + length]
        pwrite_all(fd, direct, memoryview(buf)[:length], offset)
    assert os.pread(fd, SIZE + 10, 0) == want


def test_misaligned_buffer_falls_back_to_the_page_cache(fds: tuple[int, int | None]) -> None:
    fd, direct = fds
    data = os.urandom(2 * ALIGN + 1)
    view = memoryview(bytearray(len(data) + 1))[1:]  # an address O_DIRECT refuses (EINVAL)
    view[:] = data
    pwrite_all(fd, direct, view, ALIGN)
    assert os.pread(fd, len(data), ALIGN) == data


def test_pread_into_returns_what_was_asked_and_stops_at_the_end(
    fds: tuple[int, int | None],
) -> None:
    fd, direct = fds
    want = os.urandom(SIZE)
    os.pwrite(fd, want, 0)
    buf = aligned_buffer(1 << 20)
    for offset, length in [(0, 1 << 20), (ALIGN, 5000), (77, ALIGN), (SIZE - 100, 4096)]:
        got = pread_into(fd, direct, buf, length, offset)
        assert bytes(got) == want[offset : offset + length]


def test_direct_descriptor_really_is_direct_or_absent(tmp_path: Path) -> None:
    path = tmp_path / "g"
    path.write_bytes(b"")
    direct = open_direct(path, os.O_RDWR)
    if direct is None:
        pytest.skip(f"{tmp_path} does not support O_DIRECT")
    try:
        assert fcntl.fcntl(direct, fcntl.F_GETFL) & os.O_DIRECT
    finally:
        os.close(direct)


def test_without_o_direct_support_everything_is_buffered(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(directio, "_O_DIRECT", 0)
    assert open_direct(tmp_path, os.O_RDONLY) is None


@pytest.mark.parametrize("size", [0, 1, 65536, 65537, 3 * 65536])
def test_composite_of_a_file_matches_the_composite_of_its_parts(tmp_path: Path, size: int) -> None:
    path = tmp_path / "w"
    path.write_bytes(os.urandom(size))
    fd = os.open(path, os.O_RDONLY)
    try:
        starts = range(0, size, 65536) if size else [0]
        parts = [xxh3_range(fd, s, min(65536, size - s)) for s in starts]
    finally:
        os.close(fd)
    assert file_digest(path, 65536) == composite_xxh3(parts)


@pytest.mark.parametrize("direct_io", [True, False])
def test_cache_partials_follow_fetch_direct_io(tmp_path: Path, direct_io: bool) -> None:
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    supported = open_direct(probe, os.O_RDONLY)
    if supported is None:
        pytest.skip(f"{tmp_path} does not support O_DIRECT")
    os.close(supported)
    cache = Cache(tmp_path, direct_io)
    cache.prepare()
    # Large enough to be written around the page cache (small files never are: issue 14).
    size = (4 << 20) + 3 * ALIGN + 5
    partial = cache.open_partial("m/w.bin", '"etag"', size, 1 << 20)
    small = cache.open_partial("m/config.json", '"etag"', 3 * ALIGN + 5, 1 << 20)
    assert small.direct_fd is None
    small.close()
    try:
        assert (partial.direct_fd is not None) is direct_io
        data = os.urandom(size)
        buf = aligned_buffer(len(data))
        buf[: len(data)] = data
        partial.pwrite(memoryview(buf)[: len(data)], 0)
        assert partial.path.read_bytes() == data
    finally:
        partial.close()


def test_socket_buffers_are_aligned_for_direct_writes() -> None:
    # A misaligned buffer would not fail: every write would quietly take the page cache.
    import asyncio
    import ctypes

    from fetcher.transfer.http import BUF_SIZE, _Conn

    loop = asyncio.new_event_loop()
    try:
        conn = _Conn(loop, 1.0, None)
        for buf in conn.bufs:
            assert len(buf) == BUF_SIZE and BUF_SIZE % ALIGN == 0
            assert ctypes.addressof(ctypes.c_char.from_buffer(buf)) % ALIGN == 0
    finally:
        loop.close()
