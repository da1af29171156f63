"""DEST's volume. In a pod DEST should be a mounted volume: a `volumeMount` typo makes the
fetcher create the directory on the container's root file system, which fills the node's
ephemeral storage with 100 GB of weights and gets the pod evicted (issue 13). `mount_of` says
which mount holds a path (cache/flush.py asks whether it is a whole file system of its own)."""

from __future__ import annotations

import os
from pathlib import Path

from fetcher.observe import log


def warn_if_not_a_volume(dest: Path, root: Path = Path("/")) -> None:
    """Only for a DEST that does not exist yet: an existing one is the mount itself or was
    chosen on purpose, and a fetch there is a warm start."""
    if dest.exists() or dest.is_symlink():
        return
    parent = dest.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:
        same = os.stat(parent).st_dev == os.stat(root).st_dev
    except OSError:
        return
    if same:
        log.warning(
            "cache_not_a_volume",
            f"{dest} does not exist and would be created on the container's root file system "
            f"({parent} is not a mount): is the volumeMount's mountPath the same as "
            "MODEL_CACHE_DIR?",
            dest=str(dest),
        )


def mount_of(path: str, mountinfo: str = "/proc/self/mountinfo") -> tuple[str, str, str] | None:
    """(root, mount point, file system type) of the mount that holds `path`: the longest
    mount point above it, the last mounted where several share one."""
    try:
        with open(mountinfo, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    best: tuple[str, str, str] | None = None
    for line in lines:
        fields = line.split(" ")
        if "-" not in fields[5:-1]:
            continue  # not a mountinfo line: no separator before the file system type
        root, point = _unescape(fields[3]), _unescape(fields[4])
        fstype = fields[fields.index("-", 5) + 1]
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[1])):
            best = (root, point, fstype)
    return best


def _unescape(field: str) -> str:
    """mountinfo writes a space, tab, newline or backslash in a path as an octal escape."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field
