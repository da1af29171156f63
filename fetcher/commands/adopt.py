"""Files already in DEST that the state does not vouch for: proved and kept, or replaced loudly.

A lost or corrupt state.json, or a cache filled earlier by another tool (`aws s3 sync`, a
KServe initializer, a node pre-warm job), used to mean downloading every byte again although
the bytes were there (issue 13). A present file of the expected size is hashed (in threads,
several at once) against what the manifest or S3's own checksum says; a match is adopted as if
this run had fetched it. Anything else under a model file's name is replaced, after a warning.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from fetcher.cache.state import FileState
from fetcher.cache.store import Cache
from fetcher.errors import CacheError
from fetcher.observe import log
from fetcher.tasks import run_all
from fetcher.transfer.plan import Job
from fetcher.verify.hashes import FileDigests

_HASHING = max(2, os.cpu_count() or 2)  # files hashed at once; each reads with large blocks


async def adopt(jobs: list[Job], cache: Cache, recorded: set[str]) -> dict[str, FileState]:
    """Of `jobs` (about to be fetched, each with a regular file under its final name:
    `Cache.regular_files`), those whose file is proved: their states. Present files not
    recorded and not proved are logged as replaced."""
    found: dict[str, FileState] = {}
    limit = asyncio.Semaphore(_HASHING)

    async def one(job: Job) -> None:
        path = cache.final_path(job.obj.rel)
        async with limit:
            fs, why = await asyncio.to_thread(_prove, path, job)
        if fs is not None:
            found[job.obj.rel] = fs
        elif job.obj.rel not in recorded:
            log.warning(
                "replacing_foreign_file",
                f"{job.obj.rel} is in the cache but was not placed by the fetcher and {why}: "
                "replacing it",
                file=job.obj.rel,
            )

    await run_all(one(job) for job in jobs)
    if found:
        log.event(
            "files_adopted",
            f"kept {len(found)} files already in the cache: their bytes match the source",
            files=len(found),
        )
    return found


def _prove(path: Path, job: Job) -> tuple[FileState | None, str]:
    """Blocking (a thread): the file's state if its bytes are the expected ones, else why not."""
    want = job.expected
    if want.xxh3 is None and want.s3_value is None:
        return None, "there is no checksum to prove it"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror})"
    try:
        before = os.fstat(fd)
        if before.st_size != job.obj.size:
            return None, f"has {before.st_size} bytes, not {job.obj.size}"
        digests = FileDigests(want.s3_algorithm if want.s3_value else None)
        digests.feed(fd, job.obj.size)
        after = os.fstat(fd)
    except (OSError, CacheError) as exc:
        return None, f"cannot be read ({getattr(exc, 'strerror', None) or exc})"
    finally:
        os.close(fd)
    xxh3, s3_sum = digests.result()
    if (after.st_mtime_ns, after.st_size) != (before.st_mtime_ns, before.st_size):
        return None, "changed while it was hashed"
    if (want.xxh3 is not None and xxh3 != want.xxh3) or (
        want.s3_value is not None and s3_sum != want.s3_value
    ):
        return None, f"its bytes differ from the source's ({want.source})"
    obj = job.obj
    return FileState(obj.size, obj.etag, xxh3, after.st_mtime_ns, want.source), ""
