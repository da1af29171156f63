"""The commit log: which final names are being given to files, so that a crash between a
rename into place and the state's record of it is repaired by the next run.

One append-only file for the whole fetch, one line per rename (`{"rel", "part"}`), written
before the rename. A per-file journal written for each commit created (and later deleted) a
second file per model file: with thousands of small files, ext4's inode allocator then spent
a quarter of the fetch's CPU skipping recently deleted inodes (perf, 1000 x 64 KiB on this
VM's journal-less ext4, issue 14; a journaled one skips that search, but not the creations).
Like the journals before it, the log is not fsynced: its append is ordered before the rename
by the file system's metadata journal, and the state that makes it obsolete is fsynced.
"""

from __future__ import annotations

import json
import os
from contextlib import suppress
from pathlib import Path

from fetcher.cache.oserrors import os_errors


class CommitLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self.added = 0  # lines written by this run: a state save keeps the log if it grew

    def add(self, rel: str, part: Path) -> None:
        """Say that `part` is about to be renamed to `rel` (callers serialise the calls)."""
        line = json.dumps({"rel": rel, "part": part.name}) + "\n"
        with os_errors("write", self.path):
            if self._fd is None:
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                self._fd = os.open(self.path, flags, 0o644)
            os.write(self._fd, line.encode())
        self.added += 1

    def clear(self) -> None:
        """Every rename logged is recorded in a saved state: the log is no longer needed."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with suppress(FileNotFoundError):
            self.path.unlink()

    def renamed(self) -> list[str]:
        """The final names of logged renames that happened (their partial file is gone);
        a line cut short by a crash was written before its rename, so it never happened."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return []
        found = []
        for line in lines:
            try:
                doc = json.loads(line)
                rel, part = doc["rel"], doc["part"]
            except (ValueError, KeyError, TypeError):
                continue
            named = isinstance(rel, str) and isinstance(part, str)
            if named and not (self.path.parent / Path(part).name).exists():
                found.append(rel)
        return found
