"""What each file's bytes must hash to: the publisher's manifest, S3's own checksums, or
nothing but the ETag pin (and then the log says that the source was not verified)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Mapping

from fetcher.cache.state import write_json_atomic
from fetcher.cache.store import Cache
from fetcher.errors import ManifestError, ObjectNotFound
from fetcher.observe import log
from fetcher.source.base import ControlPlane, RemoteObject
from fetcher.tasks import run_all
from fetcher.transfer.plan import Expected, Job
from fetcher.verify.manifest import MANIFEST_NAME, Manifest

# Full-object checksums we can recompute locally, best first. CRC32C needs a native library
# we do not ship; an object with only that one is pinned by ETag and reported unverified.
S3_ALGORITHMS = {"ChecksumSHA256": "sha256", "ChecksumSHA1": "sha1", "ChecksumCRC32": "crc32"}
# A manifest holds ~36 bytes per part: 256 MiB is millions of parts, far beyond any model,
# and keeps a stray multi-GB object under that name from being read into memory.
MAX_MANIFEST = 256 << 20
_HEADS_INFLIGHT = 16
_COMPOSITE = re.compile(r"-\d+$")


async def load_manifest(
    src: ControlPlane, cache: Cache, listing: list[RemoteObject]
) -> Manifest | None:
    """The remote manifest, from the local copy when its ETag is unchanged (no GET)."""
    entry = next((o for o in listing if o.rel == MANIFEST_NAME), None)
    if entry is None:
        return None
    if entry.size > MAX_MANIFEST:
        raise ManifestError(f"{MANIFEST_NAME} is {entry.size} bytes: too large to be a manifest")
    copy = cache.meta / "manifest.json"
    try:
        doc = json.loads(copy.read_text(encoding="utf-8"))
        if doc["etag"] == entry.etag:
            return Manifest.loads(doc["body"])
    except (OSError, ValueError, KeyError, TypeError, ManifestError):
        pass  # no usable copy: fetch it
    body = await src.get_bytes(entry.key, etag=entry.etag)
    manifest = Manifest.loads(body)
    await asyncio.to_thread(
        write_json_atomic, copy, {"etag": entry.etag, "body": body.decode("utf-8")}
    )
    return manifest


def manifest_jobs(
    objs: list[RemoteObject], manifest: Manifest, wanted: Callable[[str], bool]
) -> list[Job]:
    """Every wanted manifest file must be listed with the same size; others are skipped."""
    listed = {o.rel: o for o in objs}
    by_path = {p: mf for p, mf in manifest.by_path().items() if wanted(p)}
    for path, mf in by_path.items():
        obj = listed.get(path)
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
        Job(listed[p], Expected(mf.xxh3, mf.part_size, mf.parts, "manifest"))
        for p, mf in by_path.items()
    ]


async def add_s3_checksums(src: ControlPlane, jobs: list[Job]) -> None:
    """Without a manifest: ask S3 for full-object checksums of the files to download."""
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
    if unverified:
        log.warning(
            "source_unverified",
            f"{len(unverified)} files have no {MANIFEST_NAME} and no S3 checksum: "
            "pinned by ETag and hashed locally, but the source is not verified",
            files=len(unverified),
            examples=sorted(unverified)[:20],
        )


def s3_expected(sums: Mapping[str, str]) -> Expected | None:
    """The best full-object checksum among `sums` (HEAD's Checksum* fields), if any."""
    for name, algo in S3_ALGORITHMS.items():
        value = sums.get(name)
        # "<base64>-<parts>" is a checksum of part checksums (a composite multipart upload),
        # which servers may return without ChecksumType; it says nothing about the bytes.
        if value and not _COMPOSITE.search(value):
            return Expected(source=f"s3:{algo}", s3_algorithm=algo, s3_value=value)
    return None
