"""`publish LOCAL_DIR s3://bucket/prefix/`: upload a model and its checksum manifest.

The manifest (`.model-manifest.json`) is written last, so a reader that finds it knows every
file it names is already in place. Each file's xxh3-128 is also stored as object metadata,
which lets a re-run skip files the bucket already holds with the same size and checksum.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fetcher.cache.keys import safe_rel
from fetcher.cache.layout import META_DIR
from fetcher.cache.oserrors import cache_error
from fetcher.commands.register import register_published
from fetcher.commands.selection import wanted
from fetcher.commands.signing import IGNORED, Sums, file_sums, refuse_colons, sign_model
from fetcher.config import Config
from fetcher.errors import CacheError, ConfigError, FetchError
from fetcher.observe import log
from fetcher.source.boto import Source
from fetcher.tasks import run_all
from fetcher.verify.checks import check_model
from fetcher.verify.formats import skipped_note
from fetcher.verify.hashes import part_hashes
from fetcher.verify.manifest import MANIFEST_NAME, Manifest, ManifestFile
from fetcher.verify.oms import PARTS_SIGNATURE_NAME, SIGNATURE_NAME
from fetcher.verify.omskeys import SigningKey, load_signing_key

_MIN_UPLOAD_PART = 8 << 20  # S3 multipart parts must be >= 5 MiB (all but the last)
_MAX_UPLOAD_PARTS = 10_000  # S3's limit on the parts of one multipart upload
_UPLOAD_BUFFER = 256 << 20  # bytes of parts held in memory at once, whatever the model size


@dataclass(frozen=True, slots=True)
class LocalFile:
    path: Path
    rel: str
    size: int


def local_files(
    root: Path, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()
) -> list[LocalFile]:
    """Files under root that the filters select, in a stable order; our own state is skipped.

    Links to files are followed: a Hugging Face download may hold its large shards as links
    into its cache, and skipping them would publish a model without its weights. Every file is
    opened once here, so an unreadable one stops the publish before a byte is uploaded.
    """
    found = []
    for path in sorted(_walk(root, root)):
        rel = path.relative_to(root).as_posix()
        if not wanted(rel, include, exclude):
            continue
        with reading("read", path):
            entry = _local_file(path, rel)
        if entry is not None:
            found.append(entry)
    if not found:
        raise CacheError(f"nothing to publish in {root}")
    return found


def _local_file(path: Path, rel: str) -> LocalFile | None:
    if path.is_file():
        safe_rel(rel)  # a name every fetcher would refuse must not reach the bucket
        with open(path, "rb") as fh:
            return LocalFile(path, rel, os.fstat(fh.fileno()).st_size)
    if path.is_symlink():
        # Silently leaving it out would publish an incomplete model.
        what = "a directory (not followed)" if path.exists() else "nothing"
        raise CacheError(f"cannot publish {rel}: it is a link to {what}")
    return None


def _walk(root: Path, folder: Path) -> Iterator[Path]:
    """Every entry under folder, links to folders not followed. Path.rglob skips a folder it
    may not list; here that is an error, since skipping it would publish a partial model."""
    with reading("list", folder), os.scandir(folder) as it:
        entries = [(Path(e.path), e.is_dir(follow_symlinks=False)) for e in it]
    for path, is_dir in entries:
        if folder == root and path.name == META_DIR:
            continue
        if is_dir and (skip := _not_the_model(root, path)):
            log.event("publish_skipped", f"skipping {path.relative_to(root)}/: {skip}")
            continue
        yield path
        if is_dir:
            yield from _walk(root, path)


def _not_the_model(root: Path, folder: Path) -> str | None:
    """Folders a `git clone` or a Hugging Face download leaves beside the model: .git holds a
    second copy of every LFS weight, .cache/huggingface the download's own bookkeeping."""
    if folder.name == ".git":
        return "git's own data (a second copy of every LFS file)"
    if folder.relative_to(root).as_posix() == ".cache/huggingface":
        return "the Hugging Face download cache"
    return None


@contextmanager
def reading(action: str, path: Path | str) -> Iterator[None]:
    """OSError to CacheError, as cache/oserrors.py words it, with the publisher's own fix."""
    try:
        yield
    except OSError as exc:
        where = exc.filename or path  # the file itself when the error came from deeper down
        raise cache_error(exc, action, where, fix="make LOCAL_DIR readable for it") from exc


def upload_part_size(size: int, part_size: int) -> int:
    """At least 8 MiB, and large enough that `size` fits in S3's 10,000 parts."""
    need = -(-size // _MAX_UPLOAD_PARTS)
    need = -(-need // (1 << 20)) << 20  # whole MiB
    return max(part_size, _MIN_UPLOAD_PART, need)


async def publish(cfg: Config) -> int:
    assert cfg.local_dir is not None
    started = time.monotonic()
    files = local_files(cfg.local_dir, cfg.include, cfg.exclude)
    key = _signing_key(cfg)
    if key is not None:
        # Signatures are made anew from these bytes: an old one in LOCAL_DIR is not a file.
        files = [f for f in files if f.rel not in IGNORED]
        refuse_colons([f.rel for f in files])
    # A shard a fetcher would refuse is refused here, before a single byte is uploaded.
    if note := skipped_note(cfg.skip_format_checks):
        log.warning("format_checks_skipped", note)
    with reading("read", cfg.local_dir):
        await asyncio.to_thread(
            check_model, cfg.local_dir, [f.rel for f in files], cfg.skip_format_checks
        )
    async with Source(cfg) as src:
        up = _Uploader(cfg, src, signing=key is not None)
        entries = await up.hash_all(files)
        await run_all(up.upload_if_needed(f, e) for f, e in zip(files, entries, strict=True))
        pin = await _put_signatures(cfg, src, key, up, files, entries) if key else None
        manifest = Manifest(files=[up.pinned.get(e.path, e) for e in entries])
        body = manifest.dumps().encode()
        written = await src.put(cfg.prefix + MANIFEST_NAME, body, {})
    if cfg.register:
        await register_published(cfg, body, _version_id(written), pin)
    took = time.monotonic() - started
    log.event(
        "published",
        f"published {len(files)} file{'' if len(files) == 1 else 's'} "
        f"to s3://{cfg.bucket}/{cfg.prefix}",
        files=len(files),
        uploaded=up.uploaded,
        skipped=up.skipped,
        bytes=sum(f.size for f in files),
        duration_s=round(took, 3),
        root_digest=pin,
    )
    if pin is not None:
        print(pin, flush=True)  # the value a deployment pins (FETCH_MODEL_DIGEST)
    return 0


def _signing_key(cfg: Config) -> SigningKey | None:
    if cfg.trust.sign_key is None:
        return None
    try:
        return load_signing_key(cfg.trust.sign_key, cfg.trust.sign_chain)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--sign-key: {exc}") from None


async def _put_signatures(
    cfg: Config,
    src: Source,
    key: SigningKey,
    up: _Uploader,
    files: list[LocalFile],
    entries: list[ManifestFile],
) -> str:
    """model.sig (a file of the model, in the manifest too) and .model-parts.sig, uploaded
    before the manifest: a reader that finds the manifest finds the signatures."""
    assert cfg.local_dir is not None
    sizes = {f.rel: f.size for f in files}
    sigs = await asyncio.to_thread(
        sign_model, key, cfg.local_dir.name, up.sums, sizes, cfg.part_size
    )
    meta = {"xxh3": sigs.manifest_entry.xxh3}
    answer = await src.put(cfg.prefix + SIGNATURE_NAME, sigs.model_sig, meta)
    await src.put(cfg.prefix + PARTS_SIGNATURE_NAME, sigs.parts_sig, {})
    entry = sigs.manifest_entry
    if version_id := _version_id(answer):  # GET by version, as every other file (issue 12/15)
        entry = dataclasses.replace(entry, version_id=version_id, etag=str(answer["ETag"]))
    entries.append(entry)
    log.event("signed", f"signed {len(files)} files: {sigs.pin}", root_digest=sigs.pin)
    return sigs.pin


class _Uploader:
    def __init__(self, cfg: Config, src: Source, signing: bool = False) -> None:
        self.cfg, self.src = cfg, src
        self.signing = signing
        self.sums: dict[str, Sums] = {}  # with signing: each file's sha256, whole and parts
        # Parts (and small files) held in memory at once: the buffer over the typical part.
        typical = max(cfg.part_size, _MIN_UPLOAD_PART)
        self.parts_inflight = asyncio.Semaphore(max(1, _UPLOAD_BUFFER // typical))
        self.hashing = asyncio.Semaphore(os.cpu_count() or 2)
        self.uploaded = self.skipped = 0
        # Entries with the VersionId and ETag each object got, when the bucket versions them.
        self.pinned: dict[str, ManifestFile] = {}

    async def hash_all(self, files: list[LocalFile]) -> list[ManifestFile]:
        """Manifest entries, in the order of `files`; files are hashed in parallel."""
        entries: list[ManifestFile | None] = [None] * len(files)

        async def one(i: int) -> None:
            entries[i] = await self.hash(files[i])

        await run_all(one(i) for i in range(len(files)))
        return [e for e in entries if e is not None]

    async def hash(self, f: LocalFile) -> ManifestFile:
        async with self.hashing:
            with reading("read", f.path):
                if self.signing:  # the same single pass, with sha256 beside xxh3
                    sums = await asyncio.to_thread(file_sums, f.path, self.cfg.part_size)
                    whole, parts = sums.xxh3, sums.xxh3_parts
                    self.sums[f.rel] = sums
                else:
                    whole, parts = await asyncio.to_thread(part_hashes, f.path, self.cfg.part_size)
                size = f.path.stat().st_size
        if size != f.size:
            raise CacheError(f"{f.rel} changed while being published")
        return ManifestFile(f.rel, f.size, whole, self.cfg.part_size, tuple(parts))

    async def upload_if_needed(self, f: LocalFile, entry: ManifestFile) -> None:
        key = self.cfg.prefix + f.rel
        if (head := await self._already_there(key, entry)) is not None:
            self.skipped += 1
            self._pin(entry, head)
            return
        meta = {"xxh3": entry.xxh3}
        part_size = upload_part_size(f.size, self.cfg.part_size)
        if f.size <= part_size:
            async with self.parts_inflight:
                with reading("read", f.path):
                    data = await asyncio.to_thread(f.path.read_bytes)
                written = await self.src.put(key, data, meta)
        else:
            written = await self._multipart(f, key, meta, part_size)
        self._pin(entry, written)
        self.uploaded += 1
        log.event("file_published", f"uploaded {f.rel}", file=f.rel, bytes=f.size)

    def _pin(self, entry: ManifestFile, answer: Mapping[str, Any]) -> None:
        version_id = _version_id(answer)
        if version_id:
            pinned = dataclasses.replace(entry, version_id=version_id, etag=str(answer["ETag"]))
            self.pinned[entry.path] = pinned

    async def _already_there(self, key: str, entry: ManifestFile) -> Mapping[str, Any] | None:
        """The HEAD of the object when it already holds these bytes."""
        head = await self.src.head(key)
        if head is None:
            return None
        same = head.size == entry.size and head.metadata.get("xxh3") == entry.xxh3
        return {"ETag": head.etag, "VersionId": head.version_id} if same else None

    async def _multipart(
        self, f: LocalFile, key: str, meta: dict[str, str], part_size: int
    ) -> Mapping[str, Any]:
        upload_id = await self.src.create_multipart(key, meta)
        try:
            etags = await self._upload_parts(f, key, upload_id, part_size)
            return await self.src.complete_multipart(key, upload_id, etags)
        except BaseException:
            await self._abort(key, upload_id)
            raise

    async def _upload_parts(
        self, f: LocalFile, key: str, upload_id: str, part_size: int
    ) -> list[str]:
        count = (f.size + part_size - 1) // part_size
        etags: list[str] = [""] * count

        async def one(index: int) -> None:
            async with self.parts_inflight:
                offset = index * part_size
                with reading("read", f.path):
                    data = await asyncio.to_thread(_read_at, f.path, offset, part_size)
                etags[index] = await self.src.upload_part(key, upload_id, index + 1, data)

        await run_all(one(i) for i in range(count))
        return etags

    async def _abort(self, key: str, upload_id: str) -> None:
        try:
            await self.src.abort_multipart(key, upload_id)
        except FetchError:
            log.warning("abort_failed", f"could not abort the multipart upload of {key}")


def _version_id(answer: Mapping[str, Any]) -> str | None:
    """S3 says "null" for an object written while versioning was suspended: no version."""
    version_id = answer.get("VersionId")
    return str(version_id) if version_id and version_id != "null" else None


def _read_at(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(length)
