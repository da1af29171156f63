"""What each file's bytes must hash to: the publisher's manifest, S3's own checksums, or
nothing but the ETag pin (and then the log says that the source was not verified)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable

from fetcher.cache.state import write_json_atomic
from fetcher.cache.store import Cache
from fetcher.errors import ManifestError, ObjectNotFound
from fetcher.observe import log
from fetcher.source.base import ControlPlane, RemoteObject
from fetcher.tasks import run_all
from fetcher.transfer.plan import Expected, Job, s3_expected
from fetcher.verify.manifest import MANIFEST_NAME, Manifest

# A manifest holds ~36 bytes per part: 256 MiB is millions of parts, far beyond any model,
# and keeps a stray multi-GB object under that name from being read into memory.
MAX_MANIFEST = 256 << 20
_HEADS_INFLIGHT = 16


async def load_manifest(
    src: ControlPlane,
    cache: Cache,
    listing: list[RemoteObject],
    version_id: str | None = None,
    prefix: str = "",
) -> tuple[Manifest, str] | None:
    """The remote manifest and the sha256 of its bytes, from the local copy when its ETag
    (or the pinned `version_id`) is unchanged (no GET). A pinned version is read even when
    the latest manifest was deleted or overwritten."""
    entry = next((o for o in listing if o.rel == MANIFEST_NAME), None)
    if entry is None and version_id is None:
        return None
    if entry is not None and version_id is None and entry.size > MAX_MANIFEST:
        raise ManifestError(f"{MANIFEST_NAME} is {entry.size} bytes: too large to be a manifest")
    pin = {"version_id": version_id} if version_id else {"etag": entry.etag if entry else ""}
    copy = cache.meta / "manifest.json"
    try:
        doc = json.loads(copy.read_text(encoding="utf-8"))
        if all(doc.get(k) == v for k, v in pin.items()):
            return Manifest.loads(doc["body"]), _sha256(doc["body"].encode("utf-8"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ManifestError):
        pass  # no usable copy: fetch it
    key = entry.key if entry else prefix + MANIFEST_NAME
    etag = None if version_id else (entry.etag if entry else None)
    body = await src.get_bytes(key, etag=etag, version_id=version_id)
    if len(body) > MAX_MANIFEST:
        raise ManifestError(f"{MANIFEST_NAME} is {len(body)} bytes: too large to be a manifest")
    manifest = Manifest.loads(body)
    await asyncio.to_thread(write_json_atomic, copy, {**pin, "body": body.decode("utf-8")})
    return manifest, _sha256(body)


def check_promised(loaded: tuple[Manifest, str] | None, promised: str | None) -> None:
    """The manifest must be the one the registry recorded at `publish --register`."""
    if promised is None:
        return
    if loaded is None:
        raise ManifestError(
            f"{MANIFEST_NAME} is missing, but the registry recorded sha256:{promised}"
        )
    if loaded[1] != promised:
        raise ManifestError(
            f"{MANIFEST_NAME} has sha256:{loaded[1]}, "
            f"but the registry recorded sha256:{promised} for this version"
        )


def _sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def manifest_jobs(
    objs: list[RemoteObject],
    manifest: Manifest,
    wanted: Callable[[str], bool],
    prefix: str = "",
) -> list[Job]:
    """Every wanted manifest file must be listed with the same size; others are skipped.

    A file with a version_id is that object version, whatever the listing says now: the
    latest may have been overwritten or deleted since publish (issue 15)."""
    listed = {o.rel: o for o in objs}
    by_path = {p: mf for p, mf in manifest.by_path().items() if wanted(p)}
    pinned = {
        p: RemoteObject(prefix + p, p, mf.size, mf.etag or "", mf.version_id)
        for p, mf in by_path.items()
        if mf.version_id
    }
    for path, mf in by_path.items():
        obj = pinned.get(path) or listed.get(path)
        if obj is None:
            raise ManifestError(f"{MANIFEST_NAME} names {path}, which is missing from the bucket")
        if obj.size != mf.size:
            raise ManifestError(
                f"{path}: {obj.size} bytes in the bucket, {mf.size} in {MANIFEST_NAME}"
            )
    extra = sorted(set(listed) - set(by_path))
    if extra:
        log.warning(
            "not_in_manifest",
            f"skipping {len(extra)} files not in {MANIFEST_NAME}",
            files=extra[:20],
        )
    return [
        Job(pinned.get(p) or listed[p], Expected(mf.xxh3, mf.part_size, mf.parts, "manifest"))
        for p, mf in by_path.items()
    ]


async def add_s3_checksums(src: ControlPlane, jobs: list[Job]) -> list[str]:
    """Without a manifest: ask S3 (a HEAD each) for full-object checksums of the files to
    download; returns the files that have none. (A small file's GET asks itself: small.py.)"""
    inflight = asyncio.Semaphore(_HEADS_INFLIGHT)
    unverified: list[str] = []

    async def one(job: Job) -> None:
        async with inflight:
            head = await src.head(job.obj.key, checksums=True)
        if head is None:
            raise ObjectNotFound(f"{job.obj.rel} was deleted from the bucket while being fetched")
        expected = s3_expected(head.checksums)
        if expected is None:
            unverified.append(job.obj.rel)
        else:
            job.expected = expected

    await run_all(one(job) for job in jobs)
    return unverified


def warn_unverified(rels: list[str]) -> None:
    """One warning for the files that neither a manifest nor S3's checksums vouched for."""
    if rels:
        log.warning(
            "source_unverified",
            f"{len(rels)} files have no {MANIFEST_NAME} and no S3 checksum: "
            "pinned by ETag and hashed locally, but the source is not verified",
            files=len(rels),
            examples=sorted(rels)[:20],
        )
