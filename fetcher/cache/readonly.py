"""A cache volume mounted read-only (a node pre-warm directory, `readOnly: true`): served as it
is when complete, never written (no state, lease, or sweep), refused as read-only otherwise."""

from __future__ import annotations

import os
from pathlib import Path

from fetcher.errors import CacheError


def is_read_only(dest: Path) -> bool:
    """The file system holding DEST is mounted read-only (EROFS on any write)."""
    try:
        return bool(os.statvfs(dest).f_flag & os.ST_RDONLY)
    except OSError:
        return False  # missing: it is created, and any error is reported then


def incomplete_read_only(dest: Path) -> CacheError:
    return CacheError(
        f"{dest} is on a read-only volume (EROFS) and holds no complete model: mount it "
        "read-write (readOnly: false) or fill it first from a pod that can write"
    )
