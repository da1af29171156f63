"""Small files: one whole-object GET into memory, written, fsynced, checked and placed.

A compile cache or a tokenizer set is thousands of files of a few KiB, where the per-file
costs of the part machinery were the fetch: a HEAD for S3's checksums, a preallocated partial
file and its journal, four thread hand-offs. Here the GET itself asks for S3's checksums (S3
sends them for a whole-object GET), the body is held in memory (at most SMALL_FILE bytes, and
at most `Transfer.files_open` bodies at once), its xxh3 is taken as it arrives (parts.py), and
`write` checks it and writes the partial file; the fsync and the format check go to a thread
in batches (syncer.py), and `Cache.place` renames it into place: the same crash safety as a
large file's (never an unverified or unsynced file under a final name), fewer steps.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from functools import partial
from pathlib import Path

from fetcher.cache.partial import write_whole
from fetcher.source.base import RemoteObject
from fetcher.transfer.plan import Expected, Job
from fetcher.verify.checks import check_file
from fetcher.verify.formats import family
from fetcher.verify.hashes import s3_checksum

# 1 MiB: above it a file's bytes go to disk as they arrive (bounded buffers); below it the
# whole body in memory costs at most files_open x 1 MiB (16 MiB at the default concurrency).
SMALL_FILE = 1 << 20


def is_small(job: Job, part_size: int) -> bool:
    """One part (by the manifest's part size, if it has one) of at most SMALL_FILE bytes."""
    return job.obj.size <= min(SMALL_FILE, job.expected.part_size or part_size)


def write(part: Path, obj: RemoteObject, want: Expected, body: bytearray, xxh3: str) -> int:
    """On the loop: the body against `want` (S3's checksum of at most 1 MiB in memory: under
    a millisecond), then its partial file written; returns the open descriptor. Bad bytes
    never reach the disk under any name."""
    s3_sum = s3_checksum(want.s3_algorithm, body) if want.s3_algorithm else None
    want.check(obj.rel, xxh3, s3_sum)
    return write_whole(part, body)


def format_check(part: Path, rel: str, skip: frozenset[str]) -> Callable[[], None] | None:
    """The header check for the thread that fsyncs the file; None for a file of no known
    format (a compile cache's), which is most of them."""
    if family(rel) is None:
        return None
    return partial(check_file, part, rel, skip)


def discard(part: Path) -> None:
    """A refused format, a full disk: a small file is never resumed."""
    with suppress(FileNotFoundError):
        part.unlink()
