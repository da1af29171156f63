"""Small files: one whole-object GET into memory, then one thread call that writes, fsyncs,
checks and places the file.

A compile cache or a tokenizer set is thousands of files of a few KiB, where the per-file
costs of the part machinery were the fetch: a HEAD for S3's checksums, a preallocated partial
file and its journal, four thread hand-offs. Here the GET itself asks for S3's checksums (S3
sends them for a whole-object GET), the body is held in memory (at most SMALL_FILE bytes, and
at most `Transfer.files_open` bodies at once), its xxh3 is taken as it arrives (parts.py), and
one call in a thread checks it, writes the partial file, fsyncs it, checks its format and
renames it into place (`Cache.place`): the same crash safety as a large file's, fewer steps.
"""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path

from fetcher.cache.partial import write_whole
from fetcher.cache.state import FileState, State
from fetcher.cache.store import Cache
from fetcher.source.base import RemoteObject
from fetcher.transfer.plan import Expected, Job
from fetcher.verify.checks import check_file
from fetcher.verify.hashes import s3_checksum

# 1 MiB: above it a file's bytes go to disk as they arrive (bounded buffers); below it the
# whole body in memory costs at most files_open x 1 MiB (16 MiB at the default concurrency).
SMALL_FILE = 1 << 20


def is_small(job: Job, part_size: int) -> bool:
    """One part (by the manifest's part size, if it has one) of at most SMALL_FILE bytes."""
    return job.obj.size <= min(SMALL_FILE, job.expected.part_size or part_size)


def finish(
    cache: Cache,
    obj: RemoteObject,
    want: Expected,
    body: bytearray,
    xxh3: str,
    skip: frozenset[str],
    state: State,
) -> FileState:
    """In a thread: the body against `want`, then its partial file written whole, fsynced,
    its format checked, and placed; bad bytes never reach the disk under any name."""
    s3_sum = s3_checksum(want.s3_algorithm, body) if want.s3_algorithm else None
    want.check(obj.rel, xxh3, s3_sum)
    part = cache.partial_path(obj.key)
    try:
        write_whole(part, body, lambda: check_file(part, obj.rel, skip))
        fs = FileState(obj.size, obj.etag, xxh3, 0, want.source, None)
        return cache.place(part, obj.rel, fs, state)
    except Exception:
        _discard(part)  # a format refused, a full disk: a small file is never resumed
        raise


def _discard(part: Path) -> None:
    with suppress(FileNotFoundError):
        part.unlink()
