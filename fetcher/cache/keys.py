"""The rule of object keys: which keys may become paths under DEST.

One home for it: the plan (before any download), the manifest and the recorded state all ask
here, so a key refused in one place is refused in all.
"""

from __future__ import annotations

import re

from fetcher.cache.layout import META_DIR
from fetcher.errors import UnsafeKey

_CONTROL = re.compile(r"[\x00-\x1f]")  # asked per file several times: not a loop over chars


def safe_rel(rel: str) -> str:
    """Refuse a key that could land outside DEST or inside the fetcher's own directory."""
    if why := unsafe_reason(rel):
        raise UnsafeKey(f"refusing unsafe object key {rel!r}: {why}")
    return rel


def unsafe_reason(rel: str) -> str | None:
    """What is wrong with `rel` as a path under DEST, or None."""
    if _CONTROL.search(rel):
        return "it contains a control character"
    parts = rel.split("/")
    if not rel:
        return "it names the prefix itself, not a file under it"
    if rel.startswith("/"):
        return "it is an absolute path"
    if ".." in parts:
        return "it would escape the cache directory"
    if "" in parts or "." in parts:
        # S3 keeps "a//b" and "a/./b" apart from "a/b"; a file system cannot.
        return "it has an empty or '.' path component, which no file name can keep"
    if "\\" in rel:
        return "it contains a backslash, which loaders and tools read as a path separator"
    if parts[0] == META_DIR:
        return f"it would land in the fetcher's own {META_DIR}/ directory"
    return None


def file_folder_clash(rels: list[str]) -> tuple[str, str] | None:
    """The first pair (`a`, `a/b`) that would make one name both a file and a folder: S3 may
    hold both, a directory tree cannot. The plan and the manifest both ask here."""
    clashes = file_folder_clashes(rels)
    return clashes[0] if clashes else None


def file_folder_clashes(rels: list[str]) -> list[tuple[str, str]]:
    """Every such pair, in order: the plan names them all in one message (issue 13)."""
    names, found = set(rels), []
    for rel in rels:
        parts = rel.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder in names:
                found.append((folder, rel))
    return found
