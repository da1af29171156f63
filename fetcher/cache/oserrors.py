"""OS errors of the cache volume as CacheError (exit 5), with the path and the fix.

For permissions the message carries the UID, so `kubectl describe pod` says what to change
(an fsGroup, a writable mount).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fetcher.errors import CacheError


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
