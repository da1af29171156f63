"""The cache on the PVC: layout, local state, partial files with journals, atomic commit.

    DEST/<rel>                      model files, only ever complete and verified
    DEST/.fetcher/state.json        what the fetcher placed (size, etag, xxh3, mtime)
    DEST/.fetcher/partial/<h>.part  a download in progress (never named *.safetensors)
    DEST/.fetcher/partial/<h>.json  its journal: etag, size, part size, finished parts
    DEST/.fetcher/lock, lease.json  one downloader per cache (see lease.py)

OS errors are mapped here into CacheError (exit 5) with the path and, for permissions, the
UID, so `kubectl describe pod` says what to fix.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fetcher.cache import directio
from fetcher.errors import CacheError, UnsafeKey
from fetcher.observe import log

META_DIR = ".fetcher"
STATE_VERSION = 1


@dataclass
class FileState:
    size: int
    etag: str
    xxh3: str
    mtime_ns: int
    checksum: str = "none"  # what the bytes were checked against: manifest, s3:<algo>, none
    # Set when `xxh3` is verify.composite_xxh3 over parts of this size (a file fetched with no
    # whole-file reference: its digest comes from the stream, not from reading it back).
    part_size: int | None = None


@dataclass
class State:
    files: dict[str, FileState] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)
    complete: bool = False
    last_fetch: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["version"] = STATE_VERSION
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> State:
        if doc.get("version") != STATE_VERSION:
            raise ValueError(f"unknown state version {doc.get('version')!r}")
        files = {_recorded_rel(k): FileState(**v) for k, v in doc["files"].items()}
        return cls(files, dict(doc["source"]), bool(doc["complete"]), dict(doc["last_fetch"]))


def _recorded_rel(rel: object) -> str:
    """A file entry of the state, held to the rule of keys: a damaged or planted entry must
    not make a fetch remove, or verify read, a path outside the cache."""
    try:
        return safe_rel(str(rel))
    except UnsafeKey as exc:
        raise ValueError(f"file entry {rel!r} is not a path inside the cache") from exc


@contextmanager
def os_errors(action: str, path: Path | str) -> Iterator[None]:
    """Map an OSError into CacheError with a message that names the fix."""
    try:
        yield
    except OSError as exc:
        raise cache_error(exc, action, path) from exc


def cache_error(
    exc: OSError,
    action: str,
    path: Path | str,
    fix: str = "make the cache volume writable for it, e.g. fsGroup",
) -> CacheError:
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return CacheError(
            f"cannot {action} {path}: {exc.strerror} (running as uid {os.getuid()}; {fix})"
        )
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return CacheError(f"no space left to {action} {path}")
    return CacheError(f"cannot {action} {path}: {exc.strerror or exc}")


def safe_rel(rel: str) -> str:
    """Refuse a key that could land outside DEST or inside the fetcher's own directory."""
    if why := _unsafe(rel):
        raise UnsafeKey(f"refusing unsafe object key {rel!r}: {why}")
    return rel


def _unsafe(rel: str) -> str | None:
    if any(ord(c) < 32 for c in rel):
        return "it contains a control character"
    parts = rel.split("/")
    if not rel or rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in parts):
        return "it would escape the cache directory"
    if parts[0] == META_DIR:
        return f"it would land in the fetcher's own {META_DIR}/ directory"
    return None


def write_json_atomic(path: Path, doc: object) -> None:
    """Write to a temp file, fsync, rename over `path`, fsync the directory."""
    # A name of its own per write: two writers (a thread still saving when a failure is
    # recorded) must never share a temp file, or the rename publishes their mix.
    with os_errors("write", path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with open(fd, "w", encoding="utf-8") as fh:
                json.dump(doc, fh, indent=1, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with suppress(OSError):
                os.unlink(tmp)
            raise
        fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Cache:
    def __init__(self, dest: Path, direct_io: bool = True) -> None:
        self.dest, self.direct_io = dest, direct_io
        self.meta = dest / META_DIR
        self.partial_dir = self.meta / "partial"
        self.state_path = self.meta / "state.json"
        self._state_lock = threading.Lock()

    def prepare(self) -> None:
        self._check_is_directory()
        with os_errors("create", self.partial_dir):
            self.partial_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(self.meta, os.W_OK | os.X_OK) or not os.access(self.dest, os.W_OK):
            raise cache_error(OSError(errno.EACCES, "Permission denied"), "write to", self.dest)

    def _check_is_directory(self) -> None:
        """DEST may be missing (it is created), never a file or a link to nowhere."""
        if self.dest.is_symlink() and not self.dest.exists():
            target = os.readlink(self.dest)
            raise CacheError(f"{self.dest} is a link to {target}, which does not exist")
        if self.dest.exists() and not self.dest.is_dir():
            raise CacheError(f"{self.dest} is not a directory")

    def read_state(self) -> State:
        """The recorded state (empty if none); CacheError if state.json cannot be read."""
        self._check_is_directory()
        try:
            doc = json.loads(self.state_path.read_text(encoding="utf-8"))
            return State.from_json(doc)
        except FileNotFoundError:
            return State()
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CacheError(
                f"cache state {self.state_path} is unreadable ({exc}); a fetch rebuilds it"
            ) from exc

    def load_state(self) -> State:
        """For fetch: a damaged state is no state, so every file is re-checked against the
        source and the state is written anew; serving is not blocked by our own bookkeeping.
        `verify` and `status` use `read_state`, which reports it (exit 5)."""
        try:
            return self.read_state()
        except CacheError as exc:
            log.warning("state_corrupt", str(exc), path=str(self.state_path))
            return State()

    def save_state(self, state: State) -> None:
        with self._state_lock:  # from the loop and from threads: one writer at a time
            doc = state.to_json()
            write_json_atomic(self.state_path, doc)

    def final_path(self, rel: str) -> Path:
        return self.dest / safe_rel(rel)

    def ensure_parent(self, rel: str) -> Path:
        """Create the parent directories of `rel`, never following a link out of DEST."""
        path = self.final_path(rel)
        with os_errors("create", path.parent):
            path.parent.mkdir(parents=True, exist_ok=True)
        root = os.path.realpath(self.dest)
        real = os.path.realpath(path.parent)
        if real != root and not real.startswith(root + os.sep):
            raise UnsafeKey(f"refusing {rel!r}: {path.parent} links outside the cache")
        return path

    def is_present(self, rel: str, fs: FileState) -> bool:
        """Fast check: the file we placed is still there, same size and mtime."""
        try:
            st = os.lstat(self.final_path(rel))
        except (OSError, UnsafeKey):
            return False
        return st.st_size == fs.size and st.st_mtime_ns == fs.mtime_ns

    def holds_complete(self, state: State) -> bool:
        """The last fetch finished and every file it placed is still there, as stat() says."""
        present = all(self.is_present(rel, fs) for rel, fs in state.files.items())
        return state.complete and bool(state.files) and present

    def free_bytes(self) -> int:
        with os_errors("stat", self.dest):
            st = os.statvfs(self.dest)
        return st.f_bavail * st.f_frsize

    def open_partial(self, key: str, etag: str, size: int, part_size: int) -> Partial:
        return Partial.open(self._partial_base(key), etag, size, part_size, self.direct_io)

    def partial_bytes(self, key: str) -> int:
        """Disk space the partial file of `key` holds already: a resumed or restarted download
        writes into it, so that space is not needed twice."""
        try:
            st = os.lstat(self._partial_base(key).with_suffix(".part"))
        except OSError:
            return 0
        return st.st_blocks * 512 if stat.S_ISREG(st.st_mode) else 0

    def _partial_base(self, key: str) -> Path:
        return self.partial_dir / hashlib.sha256(key.encode()).hexdigest()[:32]

    def commit(self, partial: Partial, rel: str) -> int:
        """Move a finished partial file to its final name; returns its mtime_ns."""
        path = self.ensure_parent(rel)
        with os_errors("move into place", path):
            if path.is_dir() and not path.is_symlink():
                raise CacheError(f"refusing to replace {path}: it is a directory")
            # Said in the journal first: a crash before the state records the file leaves a
            # file of ours under a final name that only the journal knows (`recover`).
            partial.committing = rel
            partial.write_journal()
            os.replace(partial.path, path)  # replaces a link itself, never what it points to
            fsync_dir(path.parent)
            mtime_ns = os.stat(path).st_mtime_ns
        partial.close()
        return mtime_ns

    def forget_partial(self, key: str) -> None:
        """Once the state records the committed file, its journal has nothing left to say."""
        with suppress(FileNotFoundError):
            self._partial_base(key).with_suffix(".json").unlink()

    def recover(self, state: State) -> None:
        """After a crash between a rename into place and the state save: the file is ours but
        unrecorded, so nothing would ever check or prune it. It is removed (fetched again if
        the bucket still has it), and the journal with it."""
        for journal in self.partial_dir.glob("*.json"):
            rel = _committed_rel(journal)
            if rel is None:
                continue
            if rel not in state.files:
                with suppress(OSError, UnsafeKey):
                    self.final_path(rel).unlink()
                log.warning("commit_unrecorded", f"removed {rel}: placed but never recorded")
            with suppress(FileNotFoundError):
                journal.unlink()

    def sweep(self) -> None:
        """After a complete fetch, under the lease: partial files and temp files left by a
        crash belong to no download any more; with multi-GB shards they are real space."""
        with suppress(OSError):
            for path in [*self.partial_dir.iterdir(), *self.meta.glob(".*.tmp")]:
                with suppress(OSError):
                    path.unlink()

    def remove(self, rel: str) -> None:
        path = self.final_path(rel)
        with os_errors("remove", path):
            if path.is_file() or path.is_symlink():
                path.unlink()
        self._prune_dirs(path.parent)

    def _prune_dirs(self, directory: Path) -> None:
        while directory != self.dest and self.dest in directory.parents:
            try:
                directory.rmdir()  # only succeeds when empty: foreign files keep it alive
            except OSError:
                return
            directory = directory.parent


def _open_own_file(path: Path) -> int:
    """Open (or create) a file of ours for writing, never through a link planted in its place:
    it would point the model's bytes, and later its final name, outside the cache."""
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        return os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
    path.unlink()
    return os.open(path, flags, 0o644)


def _committed_rel(journal: Path) -> str | None:
    """The final name a journal's rename went to, if the rename happened."""
    try:
        doc = json.loads(journal.read_text(encoding="utf-8"))
        rel = doc.get("committing")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(rel, str) or journal.with_suffix(".part").exists():
        return None  # no rename yet: an ordinary resumable partial
    return rel


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
        self.committing: str | None = None  # the final name, once the rename is under way

    @classmethod
    def open(cls, base: Path, etag: str, size: int, part_size: int, direct: bool = True) -> Partial:
        path = base.with_suffix(".part")
        with os_errors("create partial file", path):
            fd = _open_own_file(path)
        # The bulk bytes bypass the page cache where the file system allows (directio.py).
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
        self.write_journal()

    def pwrite(self, data: memoryview, offset: int) -> None:
        with os_errors("write", self.path):
            directio.pwrite_all(self.fd, self.direct_fd, data, offset)

    def mark_done(self, index: int, digest: str) -> None:
        self.done[index] = digest
        self.write_journal()

    def forget_part(self, index: int) -> None:
        self.done.pop(index, None)
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
        if self.committing is not None:
            doc["committing"] = self.committing
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
