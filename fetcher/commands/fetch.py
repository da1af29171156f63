"""One fetch run: list the prefix, compare with the cache, transfer, prune, check, record.

The order matters for a PVC that is nearly full and for serving during outages:
stale files are removed before new bytes arrive (their space is needed), the state says
`complete` only after every file is in place and the model checks passed, and a failed LIST
with a complete cache is a warning, not a failure.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from contextlib import suppress
from dataclasses import dataclass, field

from fetcher import __version__
from fetcher.cache.lease import CacheLease
from fetcher.cache.readonly import incomplete_read_only, is_read_only
from fetcher.cache.state import FileState, State
from fetcher.cache.store import Cache
from fetcher.cache.volume import warn_if_not_a_volume
from fetcher.commands.adopt import adopt
from fetcher.commands.expected import (
    add_s3_checksums,
    check_promised,
    load_manifest,
    manifest_jobs,
    warn_unverified,
)
from fetcher.commands.pickles import refuse_pickles, warn_pickles
from fetcher.commands.selection import (
    check_filtered_shards,
    check_prefix_level,
    check_selected,
    refuse_bad_keys,
    selected,
    wanted,
)
from fetcher.commands.served import info_labels, source_record
from fetcher.commands.signed import (
    SIGNATURE_SOURCE,
    Verified,
    check_coverage,
    signed_jobs,
    signers,
    verify_signature,
)
from fetcher.config import Config
from fetcher.errors import CacheError, FetchError, SourceUnreachable
from fetcher.observe import log
from fetcher.observe.metrics import Metrics
from fetcher.observe.progress import Progress
from fetcher.source.base import ControlPlane, RemoteObject, list_model
from fetcher.source.factory import open_source
from fetcher.source.registry.resolve import Resolved, resolve
from fetcher.transfer.engine import Transfer
from fetcher.transfer.outage import SourceHealth, ride_out
from fetcher.transfer.plan import Job
from fetcher.transfer.small import is_small
from fetcher.verify.checks import check_model
from fetcher.verify.formats import family, skipped_note
from fetcher.verify.hashes import file_digest
from fetcher.verify.manifest import Manifest


@dataclass
class Plan:
    keep: list[RemoteObject] = field(default_factory=list)
    fetch: list[Job] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)

    @property
    def fetch_bytes(self) -> int:
        return sum(job.obj.size for job in self.fetch)

    @property
    def keep_bytes(self) -> int:
        return sum(obj.size for obj in self.keep)


@dataclass
class Outcome:
    state: State
    plan: Plan
    served_offline: bool = False
    served_as_is: bool = False  # a read-only cache: nothing listed, nothing written
    resumed_bytes: int = 0  # of plan.fetch_bytes, already on disk from an interrupted run
    cfg: Config | None = None  # with a registry URI: the config at the resolved location


def is_complete(state: State, cache: Cache, cfg: Config) -> bool:
    """The cache holds a whole verified model of this source, as far as stat() can tell.
    Under a registry URI that is the model last resolved from the same URI."""
    if cfg.registry_ref is not None:
        same = state.source.get("uri") == cfg.registry_ref.uri
    else:
        same = {k: state.source.get(k) for k in ("bucket", "prefix")} == {
            "bucket": cfg.bucket,
            "prefix": cfg.prefix,
        }
    return same and cache.holds_complete(state)


async def make_plan(jobs: list[Job], state: State, cache: Cache, cfg: Config) -> Plan:
    plan = Plan()
    listed = {j.obj.rel for j in jobs}
    for job in jobs:
        fs = state.files.get(job.obj.rel)
        if fs is not None and _unchanged(job, fs) and cache.is_present(job.obj.rel, fs):
            plan.keep.append(job.obj)
        else:
            plan.fetch.append(job)
    if cfg.verify_mode == "full":
        await _rehash_kept(plan, state, cache, jobs)
    plan.remove = sorted(rel for rel in state.files if rel not in listed)
    return plan


def _unchanged(job: Job, fs: FileState) -> bool:
    """The cached file is this object version, and the manifest (if any) promises its bytes.

    A manifest's whole-file xxh3 differing from the recorded one means new bytes, or a cached
    digest that is a composite of parts, which cannot be compared with it: fetch again.
    """
    same_version = (fs.size, fs.etag) == (job.obj.size, job.obj.etag)
    # Under a trust policy a kept file must have been verified against these signed digests
    # (issue 12): a file of an unsigned fetch, or of another signed version, is fetched again.
    signed = job.expected.source.startswith(SIGNATURE_SOURCE)
    same_signature = not signed or fs.checksum == job.expected.source
    return same_version and same_signature and job.expected.xxh3 in (None, fs.xxh3)


async def _mismatched(state: State, cache: Cache, rels: list[str]) -> list[str]:
    """Those of `rels` whose bytes no longer hash as recorded (hashed in threads; an unreadable
    file does not match)."""
    digests = await asyncio.gather(
        *(asyncio.to_thread(_digest_or_none, cache, rel, state.files[rel]) for rel in rels)
    )
    return [rel for rel, d in zip(rels, digests, strict=True) if d != state.files[rel].xxh3]


def _digest_or_none(cache: Cache, rel: str, fs: FileState) -> str | None:
    try:
        return file_digest(cache.final_path(rel), fs.part_size)
    except OSError:
        return None  # unreadable: does not match


async def _rehash_kept(plan: Plan, state: State, cache: Cache, jobs: list[Job]) -> None:
    """FETCH_VERIFY=full: every cached file is hashed again; a changed one is fetched again."""

    mismatched = set(await _mismatched(state, cache, [o.rel for o in plan.keep]))
    bad = [o for o in plan.keep if o.rel in mismatched]
    by_rel = {j.obj.rel: j for j in jobs}
    for obj in bad:
        log.warning(
            "cache_corrupt",
            f"{obj.rel} differs from its recorded hash; fetching again",
            file=obj.rel,
        )
        plan.keep.remove(obj)
        plan.fetch.append(by_rel[obj.rel])


class Fetch:
    """Runs one fetch; `run()` returns the Outcome or raises a FetchError."""

    def __init__(self, cfg: Config, metrics: Metrics) -> None:
        self.cfg, self.metrics = cfg, metrics
        self.cache = Cache(cfg.dest, cfg.direct_io)
        self.started = time.monotonic()
        self.resumed_bytes = 0
        self.manifest: Manifest | None = None
        self.manifest_sha256: str | None = None
        self.resolved: Resolved | None = None
        self.source: dict[str, str] = {}  # the state's record of what is served (served.py)
        self.verified: Verified | None = None
        self.filtered: set[str] = set()  # listed, left out by the include / exclude filters
        self.unverified: list[str] = []  # fetched files neither a manifest nor S3 vouched for

    async def run(self) -> Outcome:
        if note := skipped_note(self.cfg.skip_format_checks):
            log.warning("format_checks_skipped", note)
        if is_read_only(self.cfg.dest):
            return await self._read_only()
        if self.cfg.in_pod:
            warn_if_not_a_volume(self.cfg.dest)
        self.cache.prepare()
        async with CacheLease(self.cache, self.cfg.identity, self.cfg.lease_ttl):
            state = self.cache.load_state()
            self.cache.recover(state)
            if self.cfg.registry_ref is not None:
                try:
                    await self._resolve()
                except SourceUnreachable as exc:  # the registry down: like a MinIO outage
                    return await self._offline(state, exc)
            async with open_source(self.cfg) as src:
                try:
                    listing = await self._list(src, state)
                except SourceUnreachable as exc:
                    return await self._offline(state, exc)
                jobs = await self._jobs(src, listing)
                plan = await make_plan(jobs, state, self.cache, self.cfg)
                on_disk = self.cache.regular_files(j.obj.rel for j in plan.fetch)
                if not self.manifest and not self.verified and plan.fetch:
                    heads = [j for j in plan.fetch if self._needs_head(j, on_disk)]
                    self.unverified = await add_s3_checksums(src, heads)
                self.source = source_record(self.cfg, self.resolved, self.manifest_sha256, jobs)
                self.source |= self._signature_record()
                await self._adopt(plan, state, on_disk)
                try:
                    await self._apply(src, plan, state)
                except FetchError as exc:
                    self._record_failure(state, exc)
                    raise
            self.metrics.model_info(info_labels(state.source))
            return Outcome(state, plan, resumed_bytes=self.resumed_bytes, cfg=self.cfg)

    async def _list(self, src: ControlPlane, state: State) -> list[RemoteObject]:
        """The listing. With the source away, a cache that can be served is served at once
        (`_offline`); one that cannot waits it out like a fetch in progress does, up to
        FETCH_OUTAGE_TOLERANCE: a pod starting during a MinIO restart is not failed."""
        if is_complete(state, self.cache, self.cfg):
            return await list_model(src, self.cfg.prefix)
        health = SourceHealth(self.cfg.outage_tolerance, self.metrics.source_change)
        return await ride_out(lambda: list_model(src, self.cfg.prefix), health)

    def _needs_head(self, job: Job, on_disk: set[str]) -> bool:
        """S3's checksums by a HEAD: a large file's (its ranged GETs bring none), and a small
        one's already on disk but not recorded (adopt proves it by them, with no GET)."""
        return job.obj.rel in on_disk or not is_small(job, self.cfg.part_size)

    async def _resolve(self) -> None:
        """A registry URI to its s3:// location, at every start: an alias may have moved."""
        assert self.cfg.registry_ref is not None
        self.resolved = await resolve(self.cfg, self.cfg.registry_ref)
        self.cfg = self.resolved.apply(self.cfg)
        log.event(
            "resolved",
            self.resolved.chain(),
            uri=self.resolved.uri,
            version=self.resolved.version,
            location=self.resolved.location,
            manifest_sha256=self.resolved.manifest_sha256,
            manifest_version=self.resolved.manifest_version,
        )

    async def _adopt(self, plan: Plan, state: State, on_disk: set[str]) -> None:
        """Present files the state does not vouch for, proved by their bytes, are kept."""
        present = [j for j in plan.fetch if j.obj.rel in on_disk]
        found = await adopt(present, self.cache, set(state.files))
        if not found:
            return
        plan.keep += [j.obj for j in plan.fetch if j.obj.rel in found]
        plan.fetch = [j for j in plan.fetch if j.obj.rel not in found]
        state.files.update(found)

    def _record_failure(self, state: State, exc: FetchError) -> None:
        """Leave the reason in the state, so `verify` and `status` can say it later."""
        state.complete = False
        state.last_fetch = {"finished": time.time(), "duration_s": self._took(), "error": str(exc)}
        with suppress(FetchError):
            self.cache.save_state(state)

    async def _jobs(self, src: ControlPlane, listing: list[RemoteObject]) -> list[Job]:
        check_prefix_level(listing, self.cfg)
        objs = selected(listing, self.cfg.include, self.cfg.exclude)
        check_selected(listing, objs, self.cfg)
        self.filtered = {o.rel for o in listing} - {o.rel for o in objs}
        # Only what will be written: FETCH_EXCLUDE can skip a bad key.
        refuse_bad_keys([obj.rel for obj in objs], self.cfg.dest)
        ggufs = [obj.rel for obj in objs if family(obj.rel) == "gguf"]
        if ggufs and "gguf" not in self.cfg.skip_format_checks:
            # Imported for GGUF models only: ~5 ms of every start otherwise (issue 14).
            from fetcher.verify.gguf import check_split_names

            check_split_names(ggufs)  # a split missing from the bucket
        # The signature first: a refusal must come before any model byte is requested.
        self.verified = await verify_signature(src, listing, self.cfg)
        if self.verified is not None:
            check_coverage(objs, listing, self.verified)
        if self.cfg.trust.refuse_pickle:
            refuse_pickles(o.rel for o in objs)
        await self._load_manifest(src, listing)
        if self.manifest is None:
            jobs = [Job(obj) for obj in objs]
        else:
            jobs = manifest_jobs(
                objs,
                self.manifest,
                lambda rel: wanted(rel, self.cfg.include, self.cfg.exclude),
                self.cfg.prefix,
            )
        return jobs if self.verified is None else signed_jobs(jobs, objs, self.verified)

    def _signature_record(self) -> dict[str, str]:
        """The verified signature in the state's source record (status, info metric)."""
        if self.verified is None:
            return {}
        st = self.verified.statement
        return {
            "root_digest": st.pin,
            "signer": st.signer,
            "serialization": self.verified.serialization,
        }

    def _log_signature(self, verified: Verified) -> None:
        st = verified.statement
        log.event(
            "signature_verified",
            f"model signature verified: {st.pin} signed by {st.signer} ({verified.serialization})",
            root_digest=st.pin,
            signer=st.signer,
            serialization=verified.serialization,
        )

    def _check_offline_trust(self, state: State, exc: SourceUnreachable) -> None:
        """Offline, a cache is served under a trust policy only if it was verified under a
        signer still configured (and the pinned digest, if any): issue 12's outage rule."""
        trust = self.cfg.trust
        if not trust.required:
            return
        recorded, signer = state.source.get("root_digest"), state.source.get("signer")
        pinned = trust.digest is None or recorded == f"sha256:{trust.digest}"
        if recorded is None or signer not in signers(self.cfg) or not pinned:
            raise SourceUnreachable(
                f"{exc}, and the cache at {self.cfg.dest} was not verified under the "
                "configured trust policy (FETCH_SIGNER_KEY / FETCH_SIGNER_CERT / "
                "FETCH_MODEL_DIGEST): not serving it"
            ) from exc

    async def _load_manifest(self, src: ControlPlane, listing: list[RemoteObject]) -> None:
        """The manifest by the version the registry (or FETCH_MANIFEST_VERSION) names, held
        to the sha256 the registry recorded for it at `publish --register`."""
        pinned = self.resolved.manifest_version if self.resolved else self.cfg.manifest_version
        promised = self.resolved.manifest_sha256 if self.resolved else None
        loaded = await load_manifest(src, self.cache, listing, pinned, self.cfg.prefix)
        check_promised(loaded, promised)
        if loaded is not None:
            self.manifest, self.manifest_sha256 = loaded

    async def _offline(self, state: State, exc: SourceUnreachable) -> Outcome:
        if not is_complete(state, self.cache, self.cfg):
            raise SourceUnreachable(
                f"{exc} and the cache at {self.cfg.dest} is incomplete"
            ) from exc
        self._check_offline_trust(state, exc)
        full = self.cfg.verify_mode == "full"
        if full and (bad := await _mismatched(state, self.cache, sorted(state.files))):
            # FETCH_VERIFY=full is a promise to rehash before serving, with or without S3.
            raise SourceUnreachable(
                f"{exc} and {bad[0]} in the cache no longer matches its recorded digest"
            ) from exc
        log.warning(
            "source_unreachable",
            f"{exc}; serving the complete cached model ({len(state.files)} files)",
        )
        self.metrics.source_unreachable.set(1)
        self.metrics.model_info(info_labels(state.source))
        cached = sum(fs.size for fs in state.files.values())
        self._record_sizes(expected=cached, cached=cached, cached_files=len(state.files))
        # Under a registry URI the location is the one last resolved (a sidecar watches it).
        served = self.cfg
        if self.cfg.registry_ref is not None:
            bucket, prefix = state.source.get("bucket", ""), state.source.get("prefix", "")
            served = dataclasses.replace(self.cfg, bucket=bucket, prefix=prefix)
        return Outcome(state, Plan(), served_offline=True, cfg=served)

    async def _read_only(self) -> Outcome:
        """Checked and served without a write; the bucket is not asked (nothing could change)."""
        state = self.cache.load_state()
        if not is_complete(state, self.cache, self.cfg):
            raise incomplete_read_only(self.cfg.dest)
        full = self.cfg.verify_mode == "full"
        if full and (bad := await _mismatched(state, self.cache, sorted(state.files))):
            raise CacheError(f"{bad[0]} in the read-only cache no longer matches its digest")
        skip = self.cfg.skip_format_checks
        await asyncio.to_thread(check_model, self.cfg.dest, sorted(state.files), skip)
        log.warning(
            "cache_read_only",
            f"{self.cfg.dest} is read-only: serving its complete model ({len(state.files)} "
            "files) as it is, without asking the bucket for changes",
        )
        cached = sum(fs.size for fs in state.files.values())
        self._record_sizes(expected=cached, cached=cached, cached_files=len(state.files))
        return Outcome(state, Plan(), served_as_is=True, cfg=self.cfg)

    async def _apply(self, src: ControlPlane, plan: Plan, state: State) -> None:
        changed = bool(plan.fetch or plan.remove) or not state.complete
        if changed or state.source != self.source:
            # Files about to be replaced stay recorded (their old copy is still ours to clean
            # up if the new version never arrives); `complete` says the set is not whole.
            self._prune(plan, state)
            state.source, state.complete = dict(self.source), False
            # A fresh DEST has nothing recorded to mark incomplete: a crash before the next
            # save leaves no state, as a crash before this one would (2 fsyncs, issue 14).
            if state.files or self.cache.state_path.exists():
                self.cache.save_state(state)
        self._check_space(plan)
        self._log_start(plan)
        if self.verified is not None:  # logged after "start", which stays the first event
            self._log_signature(self.verified)
        served = [j.obj.rel for j in plan.fetch] + [o.rel for o in plan.keep]
        warn_pickles(served, signed=self.verified is not None)
        self._record_sizes(
            expected=plan.fetch_bytes + plan.keep_bytes,
            cached=plan.keep_bytes,
            cached_files=len(plan.keep),
        )
        progress = Progress(
            plan.fetch_bytes,
            len(plan.fetch),
            self.cfg.progress_interval,
            self.cfg.progress and bool(plan.fetch),
        )
        async with progress:
            transfer = Transfer(self.cfg, src, self.cache, self.metrics, progress)
            await transfer.run(plan.fetch, state)
        warn_unverified(self.unverified + transfer.unverified)
        self.resumed_bytes = progress.resumed_bytes
        skip, files = self.cfg.skip_format_checks, sorted(state.files)
        await asyncio.to_thread(check_filtered_shards, self.cfg.dest, files, self.filtered)
        await asyncio.to_thread(check_model, self.cfg.dest, files, skip)
        state.complete = True
        state.last_fetch = {
            "finished": time.time(),
            "duration_s": self._took(),
            "bytes_fetched": plan.fetch_bytes - self.resumed_bytes,
            "files_fetched": len(plan.fetch),
        }
        self.cache.save_state(state)
        self.cache.sweep()

    def _took(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def _prune(self, plan: Plan, state: State) -> None:
        for rel in plan.remove:
            self.cache.remove(rel)
            state.files.pop(rel, None)
            self.metrics.files["removed"].inc()
            log.event("file_removed", f"removed {rel}: no longer in the bucket", file=rel)

    def _check_space(self, plan: Plan) -> None:
        held_by = self.cache.partials_held(j.obj.key for j in plan.fetch)
        held = sum(min(held_by.get(j.obj.key, 0), j.obj.size) for j in plan.fetch)
        need, free = plan.fetch_bytes - held, self.cache.free_bytes()
        if need > free:
            raise CacheError(
                f"not enough space in {self.cfg.dest}: {_gib(need)} to fetch, {_gib(free)} free"
            )

    def _log_start(self, plan: Plan) -> None:
        if not self.cfg.tls_verify and self.cfg.https:
            log.warning(
                "tls_unverified",
                "TLS certificate verification is OFF "
                "(MINIO_TLS_VERIFY=false / S3_VERIFY_SSL=0): the server is not authenticated",
            )
        log.event(
            "start",
            f"fetching {len(plan.fetch)} files ({_gib(plan.fetch_bytes)}), "
            f"{len(plan.keep)} cached ({_gib(plan.keep_bytes)})",
            chain=self.source.get("chain"),
            version=__version__,
            endpoint=self.cfg.endpoint,
            bucket=self.cfg.bucket,
            prefix=self.cfg.prefix,
            dest=str(self.cfg.dest),
            files_to_fetch=len(plan.fetch),
            bytes_to_fetch=plan.fetch_bytes,
            files_cached=len(plan.keep),
            bytes_cached=plan.keep_bytes,
            files_to_remove=len(plan.remove),
            root_digest=self.verified.statement.pin if self.verified else None,
        )

    def _record_sizes(self, expected: int, cached: int, cached_files: int) -> None:
        self.metrics.bytes_expected.set(expected)
        self.metrics.bytes_cached.set(cached)
        self.metrics.files["cached"].inc(cached_files)


def summary(outcome: Outcome, started: float) -> None:
    took = time.monotonic() - started
    fetched = outcome.plan.fetch_bytes - outcome.resumed_bytes  # downloaded by this run
    # Offline there was no plan: every recorded file is kept as it is.
    as_is = outcome.served_offline or outcome.served_as_is
    kept = len(outcome.state.files) if as_is else len(outcome.plan.keep)
    how = " (source unreachable: the cache as it was)" if outcome.served_offline else ""
    how = " (read-only cache: as it was)" if outcome.served_as_is else how
    log.event(
        "done",
        f"model ready in {took:.1f}s: {len(outcome.plan.fetch)} fetched, "
        f"{kept} kept, {len(outcome.plan.remove)} removed{how}",
        duration_s=round(took, 3),
        bytes_fetched=fetched,
        mib_per_s=round(fetched / 2**20 / took, 1) if took > 0 else None,
        files_fetched=len(outcome.plan.fetch),
        files_kept=kept,
        files_removed=len(outcome.plan.remove),
        offline=outcome.served_offline,
    )


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
