"""A download in progress: a preallocated `.part` file and the journal of its finished parts.

The journal says which parts a previous run finished (resume); a file of one part has none.
A small file has no journal and no preallocation either: `write_whole` writes it at once.
(Journals of earlier versions also named the final name once the rename was under way,
`committing`; the commit log (commits.py) says that now, and `committed_rel` reads the old.)
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from fetcher.cache import directio
from fetcher.cache.oserrors import os_errors


def _open_own_file(path: Path, truncate: bool = False) -> int:
    """Open (or create) a file of ours for writing, never through a link planted in its place:
    it would point the model's bytes, and later its final name, outside the cache."""
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_TRUNC if truncate else 0)
    try:
        return os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
    path.unlink()
    return os.open(path, flags, 0o644)


def write_whole(path: Path, data: bytes | bytearray | memoryview) -> int:
    """A small file's partial file written in one go; returns its open descriptor, which
    `settle_whole` fsyncs and closes. Page-cache writes of at most 1 MiB: the event loop makes
    them itself, the fsync goes to a thread (transfer/syncer.py)."""
    with os_errors("create partial file", path):
        fd = _open_own_file(path, truncate=True)
    try:
        with os_errors("write", path):
            directio.pwrite_all(fd, None, memoryview(data), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def settle_whole(
    fd: int, path: Path, check: Callable[[], None] | None, synced: bool = False
) -> None:
    """In a thread: `write_whole`'s file fsynced (unless its whole file system was just
    flushed: `synced`, cache/flush.py), `check`ed while its pages are still cached, its page
    cache released, and its descriptor closed, whatever happens."""
    try:
        if not synced:
            with os_errors("fsync", path):
                os.fsync(fd)
        if check is not None:
            check()
        with suppress(OSError, AttributeError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def committed_rel(journal: Path) -> str | None:
    """The final name a legacy journal's rename went to, if the rename happened."""
    try:
        doc = json.loads(journal.read_text(encoding="utf-8"))
        rel = doc.get("committing")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(rel, str) or journal.with_suffix(".part").exists():
        return None  # no rename yet: an ordinary resumable partial
    return rel


DIRECT_MIN_SIZE = 4 << 20  # smaller files are written through the page cache (Partial.open)


class Partial:
    """A preallocated file of the object's size plus a journal of its finished parts."""

    def __init__(
        self, base: Path, etag: str, size: int, part_size: int, fd: int, direct_fd: int | None
    ) -> None:
        self.path = base.with_suffix(".part")
        self.journal_path = base.with_suffix(".json")
        self.etag, self.size, self.part_size = etag, size, part_size
        self.fd, self.direct_fd = fd, direct_fd
        self.done: dict[int, str] = {}
        # A one-part file has nothing to resume (a part is kept whole or not at all): no
        # journal. Writes per file fewer, one of them on the event loop (issue 14).
        self.resumable = size > part_size

    @classmethod
    def open(cls, base: Path, etag: str, size: int, part_size: int, direct: bool = True) -> Partial:
        path = base.with_suffix(".part")
        with os_errors("create partial file", path):
            fd = _open_own_file(path)
        # The bulk bytes bypass the page cache where the file system allows (directio.py).
        # Not a small file's: an O_DIRECT write waits for the disk, on the event loop (0.55 ms
        # per 64 KiB file, 1000 files: 0.55 s of a 5.9 s fetch, profiled), while its few
        # pages in the page cache cost nothing and are written by the fsync in a thread.
        direct = direct and size >= DIRECT_MIN_SIZE
        direct_fd = directio.open_direct(path, os.O_RDWR | os.O_NOFOLLOW) if direct else None
        partial = cls(base, etag, size, part_size, fd, direct_fd)
        partial.done = partial._resumable_parts()
        if not partial.done:
            partial._preallocate()
        return partial

    def _resumable_parts(self) -> dict[int, str]:
        """Parts a previous run finished, when it fetched this same object version."""
        try:
            doc = json.loads(self.journal_path.read_text(encoding="utf-8"))
            same = (doc["etag"], doc["size"], doc["part_size"]) == (
                self.etag,
                self.size,
                self.part_size,
            )
            size_ok = os.fstat(self.fd).st_size == self.size
            return {int(k): str(v) for k, v in doc["done"].items()} if same and size_ok else {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}

    def _preallocate(self) -> None:
        with os_errors("allocate", self.path):
            os.ftruncate(self.fd, 0)
            if self.size:
                try:
                    os.posix_fallocate(self.fd, 0, self.size)
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                        raise
                    os.ftruncate(self.fd, self.size)  # file systems without fallocate
        if self.resumable:
            self.write_journal()

    def pwrite(self, data: memoryview, offset: int) -> None:
        with os_errors("write", self.path):
            directio.pwrite_all(self.fd, self.direct_fd, data, offset)

    def mark_done(self, index: int, digest: str) -> None:
        self.done[index] = digest
        if self.resumable:
            self.write_journal()

    def forget_part(self, index: int) -> None:
        self.done.pop(index, None)
        if self.resumable:
            self.write_journal()

    def write_journal(self) -> None:
        # No fsync: after a crash a journal may claim a part whose bytes were lost with the
        # page cache; resumed parts are re-hashed against their recorded digest first.
        doc = {
            "etag": self.etag,
            "size": self.size,
            "part_size": self.part_size,
            "done": {str(k): v for k, v in self.done.items()},
            "written": time.time(),
        }
        tmp = self.journal_path.with_suffix(".json.tmp")
        with os_errors("write", self.journal_path):
            tmp.write_text(json.dumps(doc), encoding="utf-8")
            os.replace(tmp, self.journal_path)

    def sync(self) -> None:
        with os_errors("fsync", self.path):
            os.fsync(self.fd)

    def drop_page_cache(self) -> None:
        # Written pages count against the pod's memory limit until reclaimed (issue 7).
        with suppress(OSError, AttributeError):
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        for fd in (self.fd, self.direct_fd):
            if fd is not None and fd >= 0:
                with suppress(OSError):
                    os.close(fd)
        self.fd, self.direct_fd = -1, None

    def discard(self) -> None:
        """Bad bytes are never resumed: remove the partial file and its journal."""
        self.close()
        for path in (self.path, self.journal_path):
            with suppress(FileNotFoundError):
                path.unlink()
