"""One part: a ranged GET with its retries, its hash, and its bytes written at their offset.

Every retry of the byte path lives here (issue 17): only TransientSourceError (and a wrong
Content-Range, which wrote nothing) are retried, with full-jitter backoff; the attempt count
resets whenever an attempt made progress, and the next attempt resumes at the byte where the
last one stopped; while the source is down, parts wait on the shared outage state instead
(outage.py). A part whose bytes fail their expected digest (the manifest's xxh3, the
signature's sha256) is fetched once more, whole, then it is a ChecksumMismatch. (A worker
process that dies is the pool's to answer: `WorkerPool.download` sends its part to a live
one. An object replaced mid-download is not a retry of a part but a new version of the file:
the engine starts that file over, once.)
This module is shared by the in-process engine and the FETCH_WORKERS processes, so it imports
neither botocore nor the cache state.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import xxhash

from fetcher.errors import ChecksumMismatch, RangeMismatch, TransientSourceError
from fetcher.observe import log
from fetcher.transfer.framing import RangeRequest
from fetcher.transfer.http import RangeGetter
from fetcher.transfer.outage import SourceHealth, is_outage

_BACKOFF_BASE, _BACKOFF_CAP = 0.2, 10.0
# A part whose bytes fail the manifest is fetched once more: TCP and TLS make a flip in transit
# rare, so a second mismatch of the same ETag is what the server holds (a stale manifest).
# More attempts only multiplied the traffic and warnings (8 per part: 232 for a 2 MiB shard).
CHECKSUM_ATTEMPTS = 2

Write = Callable[[memoryview, int], None]


@dataclass(frozen=True, slots=True)
class Part:
    index: int
    start: int
    end: int  # inclusive; -1 for the single empty part of a zero-byte object

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def plan_parts(size: int, part_size: int) -> list[Part]:
    """Split [0, size) into parts of part_size; a zero-byte object is one empty part."""
    if size == 0:
        return [Part(0, 0, -1)]
    return [
        Part(i, start, min(start + part_size, size) - 1)
        for i, start in enumerate(range(0, size, part_size))
    ]


@dataclass(frozen=True, slots=True)
class PartTask:
    """Everything one part download needs; plain values, so it can cross a process boundary."""

    key: str
    rel: str
    etag: str
    size: int
    index: int
    start: int
    end: int
    sha256: bool = False  # also hash sha256: a signed model's .model-parts.sig (issue 12)
    want_xxh3: str | None = None  # the manifest's digest of this part, if any
    want_sha256: str | None = None  # the signature's digest of this part, if any
    checksums: bool = False  # ask S3 for the object's checksums (a whole-object GET)

    @property
    def length(self) -> int:
        return max(self.end - self.start + 1, 0)


def split_digest(digest: str) -> tuple[str, str | None]:
    """(xxh3, sha256 or None) of what `PartDownloader.download` returned."""
    xxh3, _, sha256 = digest.partition("/")
    return xxh3, sha256 or None


class Hooks(Protocol):
    """What a part download reports as it goes (metrics and progress, or a worker's tally)."""

    def on_bytes(self, nbytes: int) -> None: ...
    def on_retry(self, reason: str) -> None: ...
    def on_request(self, seconds: float) -> None: ...
    def on_inflight(self, delta: int) -> None: ...
    def on_source(self, up: bool, outage_seconds: float) -> None: ...
    def on_checksum_failure(self, nbytes: int) -> None: ...


def backoff(attempt: int) -> float:
    """Exponential backoff with full jitter."""
    return random.uniform(0, min(_BACKOFF_CAP, _BACKOFF_BASE * 2**attempt))


class PartDownloader:
    def __init__(
        self,
        getter: RangeGetter,
        inflight: asyncio.Semaphore,
        retries: int,
        url: Callable[[str, bool], Awaitable[str]],
        hooks: Hooks,
        health: SourceHealth,
    ) -> None:
        self.getter, self.inflight, self.retries = getter, inflight, retries
        self.url, self.hooks, self.health = url, hooks, health

    async def download(
        self, task: PartTask, write: Write, checksums: dict[str, str] | None = None
    ) -> str:
        """The part into `write`, its bytes as expected; returns its xxh3-128, or
        "<xxh3>/<sha256>" when the task asks for sha256 too (see `split_digest`). With
        `task.checksums`, S3's checksums of the object are put in `checksums` (a retry that
        resumes mid-part is ranged and gets none: the first answer's are kept)."""
        seen = {} if checksums is None else checksums
        failures = 0
        while True:
            digest = await self._fetch(task, write, seen)
            xxh3, sha256 = split_digest(digest)
            if task.want_xxh3 in (None, xxh3) and task.want_sha256 in (None, sha256):
                return digest
            failures += 1
            self.hooks.on_checksum_failure(task.length)
            log.warning(
                "part_checksum",
                f"{task.rel} part {task.index} failed its checksum",
                file=task.rel,
                part=task.index,
                attempt=failures,
            )
            if failures >= min(self.retries, CHECKSUM_ATTEMPTS):
                bad_xxh3 = task.want_xxh3 not in (None, xxh3)
                want, got = (task.want_xxh3, xxh3) if bad_xxh3 else (task.want_sha256, sha256)
                raise ChecksumMismatch(task.rel, str(want), str(got), what=f"part {task.index} of")

    async def _fetch(self, task: PartTask, write: Write, seen: dict[str, str]) -> str:
        """One pass over the part, retrying transient failures from the byte they stopped at."""
        hasher = xxhash.xxh3_128()
        sha = hashlib.sha256() if task.sha256 else None
        got = 0
        sent = [0.0]  # when the current request went out (`_request`)

        def digest() -> str:
            return f"{hasher.hexdigest()}/{sha.hexdigest()}" if sha else str(hasher.hexdigest())

        def sink(data: memoryview, offset: int) -> None:
            nonlocal got
            write(data, offset)
            # A 2 MiB buffer at ~10 GB/s is ~0.2 ms: cheaper inline, on bytes still in the CPU
            # cache, than a second pass over the file or a thread hand-off per buffer.
            hasher.update(data)
            if sha is not None:  # in the writer thread too: hashlib releases the GIL
                sha.update(data)
            got += len(data)
            self.hooks.on_bytes(len(data))
            if self.health.down_since is not None:
                self.health.ok(sent[0])  # bytes arrive: the waiting parts need not wait

        attempts = 0
        while True:
            before = got
            if task.size and task.start + got > task.end:
                return digest()  # every byte landed before the error was seen
            try:
                await self._request(task, task.start + got, sink, seen, sent)
                self.health.ok(sent[0])
                return digest()
            except (TransientSourceError, RangeMismatch) as exc:
                # A wrong Content-Range wrote nothing (it is checked before the body), so it
                # is retried like a reset; only its persistence makes it an integrity error.
                progressed, was_up = got > before, self.health.up
                outage = not progressed and is_outage(exc)
                if outage:
                    self.health.failed(exc)
                # Failures while the source is down are bounded by the outage tolerance (the
                # probe raises), not by this part's attempts: they say nothing about the part.
                if progressed or was_up or not outage:
                    attempts = 1 if progressed else attempts + 1
                    if attempts >= self.retries:
                        raise
                self.hooks.on_retry(getattr(exc, "reason", "range_mismatch"))
                log.debug("retry", f"{task.rel} part {task.index}: {exc}", attempt=attempts)
                if not outage:  # while down, the shared probe's backoff does the waiting
                    await asyncio.sleep(backoff(attempts))

    async def _request(
        self, task: PartTask, start: int, sink: Write, seen: dict[str, str], sent: list[float]
    ) -> None:
        # The turn before the semaphore: parts waiting out an outage hold no request slot.
        async with self.health.turn(), self.inflight:
            sent[0] = self.health.clock()
            url = await self.url(task.key, task.checksums)
            req = RangeRequest(url, task.rel, task.etag, start, task.end, task.size, task.checksums)
            self.hooks.on_inflight(1)
            began = time.monotonic()
            try:
                await self.getter.get(req, sink, seen)
            finally:
                self.hooks.on_inflight(-1)
                self.hooks.on_request(time.monotonic() - began)
