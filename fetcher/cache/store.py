"""The cache on the PVC: reading and saving the state, placing files, recovery and sweeping.

The package's other modules: `layout.py` (every `.fetcher/` path), `keys.py` (which keys may
become paths), `state.py` (the state's schema and atomic save), `partial.py` (downloads in
progress and their journals), `oserrors.py` (OS errors as CacheError), `lease.py` (one
downloader per cache), `directio.py` (O_DIRECT writes and reads).
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import replace
from pathlib import Path

from fetcher.cache.commits import CommitLog
from fetcher.cache.keys import safe_rel
from fetcher.cache.layout import Layout
from fetcher.cache.oserrors import cache_error, os_errors
from fetcher.cache.partial import Partial, committed_rel
from fetcher.cache.state import FileState, State, fsync_dir, write_json_atomic
from fetcher.errors import CacheError, UnsafeKey
from fetcher.observe import log

# The state is rewritten at most this often while files are placed (and always at the end):
# rewriting and fsyncing all of state.json after every file made a many-file model quadratic
# (3000 files of 64 KiB: 77 s, 65 s of it CPU; issue 14). Files placed since the last write are
# still named by the commit log, so a crash in between is repaired by `recover`. A rewrite
# costs time in proportion to the files recorded, so the interval grows with it: at least
# _STATE_COST_RATIO times the last rewrite took, keeping rewrites near 5 % of the fetch at any
# file count (a fixed 0.2 s or 512 files was 25 rewrites of up to 35 ms for 3000 files).
_STATE_EVERY_S, _STATE_COST_RATIO = 0.2, 20


class Cache:
    def __init__(self, dest: Path, direct_io: bool = True) -> None:
        self.dest, self.direct_io = dest, direct_io
        self.layout = Layout(dest)
        self.meta = self.layout.meta
        self.partial_dir = self.layout.partial_dir
        self.state_path = self.layout.state_path
        self._state_lock = threading.Lock()  # `state.files` and the bookkeeping below
        self._save_lock = threading.Lock()
        self._unsaved: list[Path] = []  # journals of files placed since the state was written
        self._renamed_in: set[Path] = set()  # their directories, fsynced once before the state
        self._saved_at = time.monotonic()
        self._save_every = _STATE_EVERY_S
        self.commits = CommitLog(self.layout.commit_log)
        self._committing = 0  # renames logged and not yet in `state` (keep the log meanwhile)
        self._parents: set[Path] = set()  # directories ensure_parent has checked this run

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
        """Write `state` (in a thread, or at the start and end of a fetch). Only the snapshot
        is taken under the state lock: a placement on the event loop (small files) waits for
        that snapshot (~3 ms at 3000 files), never for the write and its fsyncs."""
        with self._save_lock:  # one writer at a time; rewrites are spaced by `save_due`
            with self._state_lock:
                doc = state.to_json()
                # The renames become durable before the state that records them: once per
                # directory per write, not once per file (1000 files in 10 folders: 10 fsyncs).
                dirs, self._renamed_in = self._renamed_in, set()
                done, self._unsaved = self._unsaved, []
                # Every logged rename is in `doc` when none is between its log line and its
                # record; the log may go only if no rename is logged after this snapshot.
                settled = self._committing == 0
                logged = self.commits.added
            for directory in dirs:
                with os_errors("fsync", directory):
                    fsync_dir(directory)
            began = time.monotonic()
            write_json_atomic(self.state_path, doc)
            self._saved_at = time.monotonic()
            self._save_every = max(_STATE_EVERY_S, _STATE_COST_RATIO * (self._saved_at - began))
            # Crash point 4: state written, log and journals not yet removed: `recover` does it.
            with self._state_lock:
                if settled and self.commits.added == logged:
                    self.commits.clear()
            for journal in done:
                with suppress(FileNotFoundError):
                    journal.unlink()

    def save_due(self) -> bool:
        """Whether files placed since the last write should be written now (the caller does
        it in a thread): at most every `_save_every` seconds while files are placed."""
        return time.monotonic() - self._saved_at >= self._save_every

    def final_path(self, rel: str) -> Path:
        return self.dest / safe_rel(rel)

    def ensure_parent(self, rel: str) -> Path:
        """Create the parent directories of `rel`, never following a link out of DEST.
        Each directory once per run: a compile cache puts thousands of files in a few."""
        path = self.final_path(rel)
        if path.parent in self._parents:
            return path
        with os_errors("create", path.parent):
            path.parent.mkdir(parents=True, exist_ok=True)
        root = os.path.realpath(self.dest)
        real = os.path.realpath(path.parent)
        if real != root and not real.startswith(root + os.sep):
            raise UnsafeKey(f"refusing {rel!r}: {path.parent} links outside the cache")
        self._parents.add(path.parent)
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

    def partial_path(self, key: str) -> Path:
        """The partial file of `key` (a small file's is written whole: `partial.write_whole`)."""
        return self._partial_base(key).with_suffix(".part")

    def partials_held(self, keys: Iterable[str]) -> dict[str, int]:
        """Disk space the partial files of `keys` hold already, by key (only those that have
        one): a resumed or restarted download writes into it, so that space is not needed
        twice. One listing of the partial directory, not a stat per key: before a fresh
        fetch of thousands of files it is empty, and no key is even hashed."""
        with suppress(OSError), os.scandir(self.partial_dir) as entries:
            held = {
                e.name: e.stat(follow_symlinks=False).st_blocks * 512
                for e in entries
                if e.name.endswith(".part") and e.is_file(follow_symlinks=False)
            }
            return {k: held[n] for k in keys if (n := self.partial_path(k).name) in held}
        return {}

    def regular_files(self, rels: Iterable[str]) -> set[str]:
        """Those of `rels` that name a regular file now (not a link, not a directory): one
        listing per folder, not an lstat per file (a compile cache is thousands of files in
        a few folders, and before a fresh fetch none of them is there)."""
        by_folder: dict[str, list[str]] = {}
        for rel in rels:
            by_folder.setdefault(rel.rpartition("/")[0], []).append(rel)
        found: set[str] = set()
        for folder, members in by_folder.items():
            names = self._regular_names(folder)
            if names:
                found.update(rel for rel in members if rel.rpartition("/")[2] in names)
        return found

    def _regular_names(self, folder: str) -> set[str]:
        try:
            directory = self.final_path(folder) if folder else self.dest
            with os.scandir(directory) as entries:
                return {e.name for e in entries if e.is_file(follow_symlinks=False)}
        except (OSError, UnsafeKey):
            return set()

    def _partial_base(self, key: str) -> Path:
        return self.layout.partial_base(key)

    def place(
        self, part: Path, rel: str, fs: FileState, state: State, journal: Path | None = None
    ) -> FileState:
        """The whole commit of a verified, fsynced partial file: its final name, then its
        record in `state`, which the caller writes with others when `save_due` says so.
        Short metadata calls only (a log line, a rename, a stat): a large file's runs in a
        thread, a small file's on the event loop (a thread hand-off per file was its cost).

        Crash points, each repaired by the next run's `recover` (below):
        1. before the commit log names the file: an ordinary partial, resumed or fetched again;
        2. logged, rename not done: still a partial (the .part exists);
        3. renamed (durable or not: its directory is fsynced just before the state write),
           state not yet written: the log names a file the state does not know, so it is
           removed and fetched again (never served unrecorded);
        4. state written, log or journal not yet removed: they are removed.
        """
        with self._state_lock:
            self._committing += 1
        try:
            path, mtime_ns = self.commit(part, rel)
        except BaseException:
            with self._state_lock:
                self._committing -= 1
            raise
        placed = replace(fs, mtime_ns=mtime_ns)
        with self._state_lock:
            self._committing -= 1
            state.files[rel] = placed
            self._renamed_in.add(path.parent)
            if journal is not None:  # a multi-part file's, removed once the state is written
                self._unsaved.append(journal)
        return placed

    def commit(self, part: Path, rel: str) -> tuple[Path, int]:
        """`place`'s rename: a finished partial file to its final name; returns that path and
        its mtime_ns.
        Only `place` calls it (the crash tests stop the process right after it)."""
        path = self.ensure_parent(rel)
        with os_errors("move into place", path):
            # Logged first: a crash before the state records the file leaves a file of ours
            # under a final name that only the log knows (`recover`).
            with self._state_lock:
                self.commits.add(rel, part)
            try:
                os.replace(part, path)  # replaces a link itself, never what it points to
            except IsADirectoryError:  # asked of rename, not by a stat per file beforehand
                raise CacheError(f"refusing to replace {path}: it is a directory") from None
            return path, os.stat(path).st_mtime_ns

    def recover(self, state: State) -> None:
        """After a crash between a rename into place and the state save (crash point 3 of
        `place`): the file is ours but unrecorded, so nothing would ever check or prune it.
        It is removed (fetched again if the bucket still has it), and the log with it."""
        renamed = self.commits.renamed()
        # Journals of versions before the commit log said `committing` themselves (a pod
        # upgraded across a crash): still honoured.
        legacy = {j: rel for j in self.partial_dir.glob("*.json") if (rel := committed_rel(j))}
        for rel in [*renamed, *legacy.values()]:
            if rel not in state.files:
                with suppress(OSError, UnsafeKey):
                    self.final_path(rel).unlink()
                log.warning("commit_unrecorded", f"removed {rel}: placed but never recorded")
        self.commits.clear()
        for journal in legacy:
            with suppress(FileNotFoundError):
                journal.unlink()

    def sweep(self) -> None:
        """After a complete fetch, under the lease: partial files and temp files left by a
        crash belong to no download any more; with multi-GB shards they are real space."""
        with suppress(OSError):
            for path in [*self.partial_dir.iterdir(), *self.layout.temp_files()]:
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
