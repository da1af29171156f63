"""`.model-manifest.json`: what `publish` promises and `fetch` checks, per file and per part.

    {"format": "model-fetcher-manifest", "version": 1, "hash": "xxh3-128",
     "files": [{"path": "model-00001-of-00003.safetensors", "size": 4294967296,
                "xxh3": "<32 hex>", "part_size": 33554432, "parts": ["<32 hex>", ...]}]}

Version 2 (issue 15) adds, per file, the S3 object's "version_id" and "etag" when the bucket
has versioning on: fetch then GETs that version, so an object overwritten after publish never
changes what the published manifest serves. Version 1 is still written when no file has a
version (an unversioned bucket), so older fetchers keep reading those manifests.

A manifest that does not parse or contradicts itself is an integrity error: it is the source of
truth, so a broken one must stop the fetch rather than be ignored.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from fetcher.cache.keys import file_folder_clash, safe_rel
from fetcher.errors import ManifestError, UnsafeKey

MANIFEST_NAME = ".model-manifest.json"
FORMAT = "model-fetcher-manifest"
VERSION = 1
VERSIONED = 2  # files may carry version_id and etag
HASH = "xxh3-128"
_HEX128 = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True, slots=True)
class ManifestFile:
    path: str
    size: int
    xxh3: str
    part_size: int
    parts: tuple[str, ...]
    version_id: str | None = None  # the S3 VersionId that publish wrote
    etag: str | None = None  # that version's ETag, so no HEAD is needed to pin it

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "path": self.path,
            "size": self.size,
            "xxh3": self.xxh3,
            "part_size": self.part_size,
            "parts": list(self.parts),
        }
        if self.version_id:
            doc |= {"version_id": self.version_id, "etag": self.etag}
        return doc


@dataclass(frozen=True, slots=True)
class Manifest:
    files: list[ManifestFile]

    def dumps(self) -> str:
        doc = {
            "format": FORMAT,
            "version": VERSIONED if any(f.version_id for f in self.files) else VERSION,
            "hash": HASH,
            "files": [f.to_json() for f in self.files],
        }
        return json.dumps(doc, indent=1)

    def by_path(self) -> dict[str, ManifestFile]:
        return {f.path: f for f in self.files}

    @classmethod
    def loads(cls, data: bytes | str) -> Manifest:
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise ManifestError(f"{MANIFEST_NAME} is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ManifestError(f"{MANIFEST_NAME}: not a model-fetcher manifest")
        if doc.get("version") not in (VERSION, VERSIONED):
            raise ManifestError(f"{MANIFEST_NAME}: unsupported version {doc.get('version')!r}")
        if doc.get("hash") != HASH:
            raise ManifestError(f"{MANIFEST_NAME}: unsupported hash {doc.get('hash')!r}")
        files = doc.get("files")
        if not isinstance(files, list):
            raise ManifestError(f"{MANIFEST_NAME}: 'files' must be a list")
        parsed = [_file(entry) for entry in files]
        _check_paths([f.path for f in parsed])
        return cls(parsed)


def _check_paths(paths: list[str]) -> None:
    """No path twice, and none both a file and a directory: such a model cannot be on disk."""
    seen = set(paths)
    if len(seen) != len(paths):
        twice = next(p for p in paths if paths.count(p) > 1)
        raise ManifestError(f"{MANIFEST_NAME}: {twice} is listed twice")
    if clash := file_folder_clash(paths):
        raise ManifestError(f"{MANIFEST_NAME}: {clash[0]} is both a file and a directory")


def _file(entry: object) -> ManifestFile:
    if not isinstance(entry, dict):
        raise ManifestError(f"{MANIFEST_NAME}: a file entry is not an object")
    path, size, digest = entry.get("path"), entry.get("size"), entry.get("xxh3")
    part_size, parts = entry.get("part_size"), entry.get("parts")
    if not isinstance(path, str):
        raise ManifestError(f"{MANIFEST_NAME}: an entry has no path")
    try:
        safe_rel(path)
    except UnsafeKey as exc:
        raise ManifestError(f"{MANIFEST_NAME}: {exc}") from exc
    if path == MANIFEST_NAME:
        raise ManifestError(f"{MANIFEST_NAME}: lists itself as a model file")
    if not (_is_count(size) and _is_count(part_size) and _is_hex(digest)):
        raise ManifestError(f"{MANIFEST_NAME}: malformed entry for {path}")
    if not isinstance(parts, list) or not all(_is_hex(p) for p in parts):
        raise ManifestError(f"{MANIFEST_NAME}: malformed part hashes for {path}")
    version_id, etag = entry.get("version_id"), entry.get("etag")
    if version_id is not None and not (isinstance(version_id, str) and isinstance(etag, str)):
        raise ManifestError(f"{MANIFEST_NAME}: malformed version_id or etag for {path}")
    size, part_size, digest = int(str(size)), int(str(part_size)), str(digest)
    if part_size == 0 or len(parts) != -(-size // part_size):
        raise ManifestError(
            f"{MANIFEST_NAME}: {path} has {len(parts)} part hashes "
            f"for {size} bytes in parts of {part_size}"
        )
    hashes = tuple(str(p) for p in parts)
    return ManifestFile(path, size, digest, part_size, hashes, version_id, etag)


def _is_count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_hex(v: object) -> bool:
    return isinstance(v, str) and bool(_HEX128.fullmatch(v))
