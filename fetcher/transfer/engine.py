"""The bounded engine: many parts of many files in flight, each file verified and committed.

One `asyncio.Semaphore` bounds the requests in flight for the whole process; each object is a
task whose parts are tasks; the first fatal error cancels the rest (TaskGroup). A part's own
download and its retries are `parts.py`'s; here a part is checked against the manifest, the
file as a whole (by its parts, or read back for S3's full-object checksums, `_needs_read_back`),
and only then renamed into place. Resume comes from the partial file's journal (`cache/partial.py`).
Small files (one part, at most 1 MiB) skip the partial-file machinery: one whole-object GET,
then one thread call (`small.py`); they are all fetched before the large ones.
"""

from __future__ import annotations

import asyncio
import time

from fetcher.cache.flush import volume_flush
from fetcher.cache.partial import Partial
from fetcher.cache.state import FileState, State
from fetcher.cache.store import Cache
from fetcher.config import Config
from fetcher.errors import (
    CacheError,
    ChecksumMismatch,
    IntegrityError,
    ObjectChanged,
    ObjectNotFound,
)
from fetcher.observe import log
from fetcher.observe.metrics import Metrics
from fetcher.observe.progress import Progress
from fetcher.source.base import ControlPlane, RemoteObject
from fetcher.tasks import run_all
from fetcher.transfer import small
from fetcher.transfer.http import RangeGetter
from fetcher.transfer.outage import SourceHealth
from fetcher.transfer.parts import Part, PartDownloader, PartTask, plan_parts, split_digest
from fetcher.transfer.plan import Expected, Job, s3_expected
from fetcher.transfer.small import is_small
from fetcher.transfer.syncer import Syncer
from fetcher.transfer.workers import WorkerPool
from fetcher.verify.checks import check_file
from fetcher.verify.hashes import FileDigests, composite_xxh3, sha256_range, xxh3_range

_URL_TTL = 600.0  # presigned URLs are valid for an hour; renew well before
# Small files between their write and their rename: open descriptors, far below any limit.
_SETTLING = 128


class Transfer:
    def __init__(
        self, cfg: Config, source: ControlPlane, cache: Cache, metrics: Metrics, progress: Progress
    ) -> None:
        self.cfg, self.source, self.cache = cfg, source, cache
        self.metrics, self.progress = metrics, progress
        self.inflight = asyncio.Semaphore(cfg.concurrency)
        # Bounds open partial files (fds, preallocated space) without slowing the parts.
        self.files_open = asyncio.Semaphore(max(4, cfg.concurrency))
        # Small files written and waiting for their fsync: one descriptor each, no memory.
        self.settling = asyncio.Semaphore(_SETTLING)
        self._syncer: Syncer | None = None
        self._saving = False
        self._urls: dict[tuple[str, bool], tuple[str, float]] = {}
        self._versions: dict[str, str] = {}  # key -> the pinned S3 VersionId (issue 15)
        self.hooks = MetricsHooks(metrics, progress)
        # The byte paths: worker processes for the large files' parts when FETCH_WORKERS > 1,
        # and a getter in this process (`_local`, built on first use: with https it loads
        # the CA bundle) for the small files and, without workers, for every part.
        self.pool: WorkerPool | None = None
        self.getter: RangeGetter | None = None
        self.parts: PartDownloader | None = None
        # Small files whose GET brought no S3 checksum either (the caller warns once).
        self.unverified: list[str] = []

    async def run(self, jobs: list[Job], state: State) -> None:
        """Fetch every job; each verified file is placed and recorded in `state` (whose
        writes `Cache.place` batches: the caller saves it once at the end)."""
        self._versions = {j.obj.key: j.obj.version_id for j in jobs if j.obj.version_id}
        small: list[Job] = []
        large: list[Job] = []
        for job in sorted(jobs, key=_size):
            (small if is_small(job, self.cfg.part_size) else large).append(job)
        try:
            if self.cfg.workers > 1 and large:
                self.pool = await WorkerPool.start(self.cfg, self.hooks)
            # Small files first, all of them: config and tokenizer land at once, and the small
            # files' GETs (always this process's own) never add to the workers' requests.
            await run_all(self._fetch_file(job, state) for job in small)
            await run_all(self._fetch_file(job, state) for job in large)
        except BaseException:
            if self.pool is not None:
                await self.pool.close(abort=True)
                self.pool = None
            raise
        finally:
            if self.getter is not None:
                self.getter.close()
            if self.pool is not None:
                await self.pool.close()

    async def _fetch_file(self, job: Job, state: State) -> None:
        try:
            try:
                await self._fetch_version(job, state)
            except ObjectChanged:
                if job.obj.version_id:
                    raise  # a pinned version never changes: never fall back to the latest
                # Replaced while we read it: start this file over, once, on the new version.
                job = await self._new_version(job)
                await self._fetch_version(job, state)
        except IntegrityError:
            self.metrics.files["failed"].inc()
            raise
        self.metrics.files["downloaded"].inc()
        self.progress.file_done(job.obj.rel, job.obj.size, is_small(job, self.cfg.part_size))

    def _local(self) -> PartDownloader:
        """The byte path in this process, built on first use (with https it loads the CA
        bundle): every small file, and every part when there are no worker processes."""
        if self.parts is None:
            self.getter = make_getter(self.cfg, self.cfg.concurrency)
            health = SourceHealth(self.cfg.outage_tolerance, self.hooks.on_source)
            self.parts = PartDownloader(
                self.getter, self.inflight, self.cfg.retries, self._url, self.hooks, health
            )
        return self.parts

    async def _fetch_small(self, job: Job, state: State) -> None:
        """A small file whole, in one GET (small.py); S3's checksums come with it when
        nothing else vouches for the bytes (no manifest, no signature: no HEAD was made).
        Its body holds a `files_open` slot until it is written; the fsync that follows
        holds only a descriptor (`settling`), so the next GETs are not kept waiting."""
        obj = job.obj
        part = self.cache.partial_path(obj.key)
        try:
            async with self.settling:
                async with self.files_open:
                    want, body, xxh3 = await self._small_body(job)
                    fd = small.write(part, obj, want, body, xxh3)
                    del body  # written: the page cache has it
                check = small.format_check(part, obj.rel, self.cfg.skip_format_checks)
                await self._sync().settle(fd, part, check)
            fs = FileState(obj.size, obj.etag, xxh3, 0, want.source, None)
            self.cache.place(part, obj.rel, fs, state)
        except BaseException as exc:
            small.discard(part)
            if isinstance(exc, ChecksumMismatch):
                self.metrics.checksum_failures.inc()
            raise
        await self._save_if_due(state)

    def _sync(self) -> Syncer:
        """Built on the first small file: whether DEST is a volume of its own reads the
        mount table and loads ctypes, which a model of a few large files never needs."""
        if self._syncer is None:
            self._syncer = Syncer(volume_flush(self.cache.dest))
        return self._syncer

    async def _small_body(self, job: Job) -> tuple[Expected, bytearray, str]:
        obj, want = job.obj, job.expected
        body = bytearray(obj.size)
        view = memoryview(body)

        def write(data: memoryview, offset: int) -> None:
            view[offset : offset + len(data)] = data

        ask = want.source == "none"
        found: dict[str, str] = {}
        task = self._task(job, Part(0, 0, obj.size - 1), checksums=ask)
        xxh3, _ = split_digest(await self._local().download(task, write, found))
        if ask:
            want = s3_expected(found) or want
            if want.source == "none":
                self.unverified.append(obj.rel)
        return want, body, xxh3

    async def _save_if_due(self, state: State) -> None:
        """The state written with the files placed since its last write, in a thread, by one
        file's task at a time (the others go on meanwhile)."""
        if self._saving or not self.cache.save_due():
            return
        self._saving = True
        try:
            await asyncio.to_thread(self.cache.save_state, state)
        finally:
            self._saving = False

    async def _fetch_version(self, job: Job, state: State) -> None:
        if is_small(job, self.cfg.part_size):
            await self._fetch_small(job, state)
            return
        async with self.files_open:
            await self._fetch_large(job, state)

    async def _fetch_large(self, job: Job, state: State) -> None:
        obj = job.obj
        part_size = job.expected.part_size or self.cfg.part_size
        # Threads: posix_fallocate is emulated with a write per block where the file system
        # lacks fallocate (NFSv3), and the commit fsyncs a directory; neither on the loop.
        partial = await asyncio.to_thread(
            self.cache.open_partial, obj.key, obj.etag, obj.size, part_size
        )
        try:
            await self._recheck_resumed(partial, job)
            every = plan_parts(obj.size, part_size)
            whole = None
            if _needs_read_back(job.expected, len(every)):
                whole = RunningHash(partial, every, job.expected.s3_algorithm)
            todo = [p for p in every if p.index not in partial.done]
            await run_all(self._fetch_part(job, p, partial, whole) for p in todo)
            digest, s3_sum = await whole.result() if whole else _from_parts(job, partial, every)
            await asyncio.to_thread(_sync_and_release, partial)
            try:
                job.expected.check(obj.rel, digest, s3_sum)
            except ChecksumMismatch:
                self.metrics.checksum_failures.inc()
                raise
            # Headers only (milliseconds): a truncated shard, an HTML page saved as a .gguf
            # or a cut config.json never gets its final name.
            skip = self.cfg.skip_format_checks
            await asyncio.to_thread(check_file, partial.path, obj.rel, skip)
            composite = None if whole or job.expected.xxh3 else part_size
            fs = FileState(obj.size, obj.etag, digest, 0, job.expected.source, composite)
            partial.close()
            place = self.cache.place
            await asyncio.to_thread(place, partial.path, obj.rel, fs, state, partial.journal_path)
        except IntegrityError:
            partial.discard()  # bad or mixed bytes are never resumed
            raise
        finally:
            partial.close()
        await self._save_if_due(state)

    async def _new_version(self, job: Job) -> Job:
        obj = job.obj
        head = await self.source.head(obj.key)
        if head is None:
            raise ObjectNotFound(f"{obj.rel} was deleted from the bucket while being fetched")
        new = RemoteObject(obj.key, obj.rel, head.size, head.etag)
        expected = job.expected
        if expected.parts and new.size != obj.size:
            raise ChecksumMismatch(
                obj.rel, f"{obj.size} bytes (manifest)", f"{new.size} bytes", what="replacement of"
            )
        signed = expected.source.startswith("signature:")  # holds for any version
        if expected.s3_algorithm is not None and not signed:  # S3's sum was the old version's
            expected = Expected(source="none")
        log.warning(
            "object_changed",
            f"{obj.rel} was replaced during the download; fetching the new version from the start",
            file=obj.rel,
            old_etag=obj.etag,
            new_etag=new.etag,
        )
        return Job(new, expected)

    async def _recheck_resumed(self, partial: Partial, job: Job) -> None:
        """Parts a crashed run recorded are trusted only if their bytes still hash the same."""
        if not partial.done:
            return
        parts = plan_parts(job.obj.size, partial.part_size)
        for index, digest in list(partial.done.items()):
            part = parts[index] if index < len(parts) else None
            want = job.expected.parts[index] if index < len(job.expected.parts) else digest
            if part is None or digest != want:
                partial.forget_part(index)
                continue
            actual = await asyncio.to_thread(xxh3_range, partial.fd, part.start, part.length)
            if actual == digest and job.expected.sha256_parts:
                # xxh3 is no proof against a forger: a signed part is trusted only by sha256.
                sha = await asyncio.to_thread(sha256_range, partial.fd, part.start, part.length)
                actual = digest if sha == job.expected.sha256_parts[index] else "changed"
            if actual != digest:
                partial.forget_part(index)
            else:
                self.progress.resumed(part.length)
                # On disk already, not downloaded by this run: cached, so the dashboard's
                # (cached + downloaded) / expected reaches 100 % after a resume.
                self.metrics.bytes_cached.inc(part.length)
        if partial.done:
            log.event(
                "resume",
                f"resuming {job.obj.rel}: {len(partial.done)} parts kept",
                file=job.obj.rel,
                parts_kept=len(partial.done),
            )

    async def _fetch_part(
        self, job: Job, part: Part, partial: Partial, whole: RunningHash | None
    ) -> None:
        """A part as expected (its retries, re-fetch on a bad digest: parts.py), recorded."""
        digest, _ = split_digest(await self._download_part(job, part, partial))
        partial.mark_done(part.index, digest)
        # Writeback is left to the fsync before commit: sync_file_range per part was
        # measured slower (404 vs 1093 MiB/s, A/B in one run, commit f3a501f).
        if whole is not None:
            await whole.advance()

    async def _download_part(self, job: Job, part: Part, partial: Partial) -> str:
        task = self._task(job, part)
        if self.pool is None:
            return await self._local().download(task, partial.pwrite)
        return await self.pool.download(task, partial.path, await self._url(job.obj.key))

    def _task(self, job: Job, part: Part, checksums: bool = False) -> PartTask:
        obj, want = job.obj, job.expected
        signed = want.sha256_parts[part.index] if want.sha256_parts else None
        # A one-part file's digest is its whole file's: the manifest's xxh3 holds for it.
        whole = want.xxh3 if part.start == 0 and part.end == obj.size - 1 else None
        return PartTask(
            obj.key,
            obj.rel,
            obj.etag,
            obj.size,
            part.index,
            part.start,
            part.end,
            sha256=signed is not None,
            want_xxh3=want.parts[part.index] if want.parts else whole,
            want_sha256=signed,
            checksums=checksums,
        )

    async def _url(self, key: str, checksums: bool = False) -> str:
        cached = self._urls.get((key, checksums))
        now = time.monotonic()
        if cached and now - cached[1] < _URL_TTL:
            return cached[0]
        version = self._versions.get(key)
        url = await self.source.presign_get(key, version_id=version, checksums=checksums)
        self._urls[(key, checksums)] = (url, now)
        return url


class RunningHash:
    """The whole-file hash, advanced over the file's finished prefix while later parts are
    still downloading, so the last file is not read again from its start after its last byte
    (that tail was ~0.2 s of idle network per GiB shard). It still reads the bytes back from
    the file, in file order: it checks what is on disk, not what the sockets delivered."""

    def __init__(self, partial: Partial, parts: list[Part], s3_algorithm: str | None) -> None:
        self.partial, self.parts = partial, parts
        self.digests = FileDigests(s3_algorithm)
        self.next = 0
        self.lock = asyncio.Lock()

    async def advance(self) -> None:
        if self.lock.locked():
            return  # the running advance re-checks after each part it hashes
        async with self.lock:
            await self._hash_ready_parts()

    async def _hash_ready_parts(self) -> None:
        while self.next < len(self.parts) and self.parts[self.next].index in self.partial.done:
            length = max(self.parts[self.next].length, 0)
            await asyncio.to_thread(
                self.digests.feed, self.partial.fd, length, self.partial.direct_fd
            )
            self.next += 1

    async def result(self) -> tuple[str, str | None]:
        async with self.lock:
            await self._hash_ready_parts()
        if self.next != len(self.parts):
            raise CacheError(f"{self.partial.path}: part {self.next} missing at the final hash")
        return self.digests.result()


def _needs_read_back(want: Expected, nparts: int) -> bool:
    """Whether the whole-file check must read the file back from disk, in order.

    Not when the manifest's per-part digests cover every part: the file is exactly those
    checked parts, so the manifest's whole-file xxh3 holds. Not when there is no reference at
    all: the file's own digest is then the composite of its parts' digests. Only S3's
    full-object checksums (sha256, sha1, crc32) and a manifest without usable parts need every
    byte again; with writes that bypass the page cache that re-read costs disk bandwidth (a
    4 GiB fetch: 790 MiB/s with it, 1443 without, same run, issue 7).
    """
    if want.s3_algorithm is not None:
        return True
    proven_by_parts = want.xxh3 is not None and len(want.parts) == nparts
    return want.xxh3 is not None and not proven_by_parts


def _from_parts(job: Job, partial: Partial, parts: list[Part]) -> tuple[str, None]:
    if job.expected.xxh3 is not None:
        return job.expected.xxh3, None  # every part matched the manifest (_needs_read_back)
    return composite_xxh3(partial.done[p.index] for p in parts), None


def _sync_and_release(partial: Partial) -> None:
    """In a thread: make the bytes durable, then release their page cache."""
    partial.sync()
    partial.drop_page_cache()


def _size(job: Job) -> int:
    return job.obj.size


def make_getter(cfg: Config, limit: int) -> RangeGetter:
    ctx = cfg.ssl_context()
    return RangeGetter(limit, cfg.connect_timeout, cfg.read_timeout, ctx, cfg.proxies, cfg.tls_hint)


class MetricsHooks:
    """Part progress into the Prometheus metrics and the progress reporter."""

    def __init__(self, metrics: Metrics, progress: Progress) -> None:
        self.metrics, self.progress = metrics, progress

    def on_bytes(self, nbytes: int) -> None:
        self.metrics.bytes_downloaded.inc(nbytes)
        self.progress.add(nbytes)

    def on_retry(self, reason: str) -> None:
        self.metrics.retry(reason)

    def on_request(self, seconds: float) -> None:
        self.metrics.request_duration.observe(seconds)

    def on_inflight(self, delta: int) -> None:
        self.metrics.inflight.inc(delta)

    def on_source(self, up: bool, outage_seconds: float) -> None:
        self.metrics.source_change(up, outage_seconds)

    def on_checksum_failure(self, nbytes: int) -> None:
        self.metrics.checksum_failures.inc()
        self.progress.add(-nbytes)  # those bytes are fetched again
