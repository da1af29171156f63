"""What each file's bytes must hash to: the publisher's manifest, S3's own checksums, or
nothing but the ETag pin (and then the log says that the source was not verified)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from . import log
from .cache import Cache, write_json_atomic
from .manifest import MANIFEST_NAME, Manifest, ManifestError
from .source import RemoteObject, Source
from .transfer import Expected, Job

# Full-object checksums we can recompute locally, best first.
S3_ALGORITHMS = {"ChecksumSHA256": "sha256", "ChecksumSHA1": "sha1", "ChecksumCRC32": "crc32"}


async def load_manifest(src: Source, cache: Cache, listing: list[RemoteObject]) -> Manifest | None:
    """The remote manifest, from the local copy when its ETag is unchanged (no GET)."""
    entry = next((o for o in listing if o.rel == MANIFEST_NAME), None)
    if entry is None:
        return None
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


async def add_s3_checksums(src: Source, jobs: list[Job]) -> None:
    """Without a manifest: ask S3 for full-object checksums of the files to download."""
    heads = await asyncio.gather(*(src.head_checksums(j.obj.key) for j in jobs))
    unverified = 0
    for job, sums in zip(jobs, heads, strict=True):
        found = next(((name, sums[name]) for name in S3_ALGORITHMS if name in sums), None)
        if found is None:
            unverified += 1
            continue
        algo = S3_ALGORITHMS[found[0]]
        job.expected = Expected(source=f"s3:{algo}", s3_algorithm=algo, s3_value=found[1])
    if unverified:
        log.warning(
            "source_unverified",
            f"{unverified} files have no {MANIFEST_NAME} and no S3 checksum: "
            "pinned by ETag and hashed locally, but the source is not verified",
            files=unverified,
        )
