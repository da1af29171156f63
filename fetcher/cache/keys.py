"""The rule of object keys: which keys may become paths under DEST.

One home for it: the plan (before any download), the manifest and the recorded state all ask
here, so a key refused in one place is refused in all.
"""

from __future__ import annotations

from fetcher.cache.layout import META_DIR
from fetcher.errors import UnsafeKey


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


def file_folder_clash(rels: list[str]) -> tuple[str, str] | None:
    """The first pair (`a`, `a/b`) that would make one name both a file and a folder: S3 may
    hold both, a directory tree cannot. The plan and the manifest both ask here."""
    names = set(rels)
    for rel in rels:
        parts = rel.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder in names:
                return folder, rel
    return None
