"""`publish --sign-key`: model.sig and .model-parts.sig from publish's one read pass (issue 12).

- `model.sig`: OpenSSF Model Signing, `files` serialization, sha256 per file; what the stock
  `model_signing verify key` CLI checks, and whose root digest a deployment pins.
- `.model-parts.sig`: `shards` serialization with the manifest's part size (an integer, not
  model-signing's float), covering every file *and model.sig*, so the two are bound and a
  fetcher checks each ranged part alone as it arrives.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from fetcher.errors import ConfigError
from fetcher.verify.hashes import HASH_BLOCK
from fetcher.verify.manifest import MANIFEST_NAME, ManifestFile
from fetcher.verify.oms import (
    PARTS_SIGNATURE_NAME,
    SIGNATURE_NAME,
    Serialization,
    bundle_json,
    files_resources,
    root_digest,
    shard_resources,
    statement_payload,
)
from fetcher.verify.omskeys import SigningKey

# What the stock CLI must not count as model files when it verifies LOCAL_DIR or a cache.
IGNORED = (SIGNATURE_NAME, PARTS_SIGNATURE_NAME, MANIFEST_NAME, ".fetcher")


@dataclass(slots=True)
class Sums:
    """Both hashes of a file, per part and whole, from one read."""

    xxh3: str = ""
    xxh3_parts: list[str] = field(default_factory=list)
    sha256: str = ""
    sha256_parts: list[str] = field(default_factory=list)


def refuse_colons(rels: list[str]) -> None:
    # A shard name is path:start:end; model-signing 1.1.1 signs such a name but cannot verify it.
    bad = [rel for rel in rels if ":" in rel]
    if bad:
        raise ConfigError(f"--sign-key: cannot sign file names containing ':' ({bad[0]!r})")


def file_sums(path: Path, part_size: int) -> Sums:
    """In a thread: xxh3-128 and sha256 of the file and of each part, in one pass."""
    sums = Sums()
    whole_x, whole_s = xxhash.xxh3_128(), hashlib.sha256()
    part_x, part_s = xxhash.xxh3_128(), hashlib.sha256()
    filled = 0
    with open(path, "rb", buffering=0) as fh:
        while block := fh.read(HASH_BLOCK):
            whole_x.update(block)
            whole_s.update(block)
            view, i = memoryview(block), 0
            while i < len(view):
                take = min(len(view) - i, part_size - filled)
                part_x.update(view[i : i + take])
                part_s.update(view[i : i + take])
                i, filled = i + take, filled + take
                if filled == part_size:
                    _close_part(sums, part_x, part_s)
                    part_x, part_s, filled = xxhash.xxh3_128(), hashlib.sha256(), 0
    if filled:
        _close_part(sums, part_x, part_s)
    sums.xxh3, sums.sha256 = whole_x.hexdigest(), whole_s.hexdigest()
    return sums


def _close_part(sums: Sums, part_x: xxhash.xxh3_128, part_s: hashlib._Hash) -> None:
    sums.xxh3_parts.append(part_x.hexdigest())
    sums.sha256_parts.append(part_s.hexdigest())


def bytes_sums(data: bytes, part_size: int) -> Sums:
    chunks = [data[i : i + part_size] for i in range(0, len(data), part_size)]
    return Sums(
        xxh3=xxhash.xxh3_128(data).hexdigest(),
        xxh3_parts=[xxhash.xxh3_128(c).hexdigest() for c in chunks],
        sha256=hashlib.sha256(data).hexdigest(),
        sha256_parts=[hashlib.sha256(c).hexdigest() for c in chunks],
    )


@dataclass(frozen=True, slots=True)
class Signatures:
    model_sig: bytes
    parts_sig: bytes
    manifest_entry: ManifestFile  # model.sig as a file of the model
    pin: str  # sha256:<root digest of model.sig>


def sign_model(
    key: SigningKey, name: str, sums: dict[str, Sums], sizes: dict[str, int], part_size: int
) -> Signatures:
    files = files_resources({rel: s.sha256 for rel, s in sums.items()})
    ser = Serialization("files", ignore_paths=IGNORED)
    model_sig = _bundle(key, statement_payload(name, ser, files))
    own = bytes_sums(model_sig, part_size)
    shards = {rel: s.sha256_parts for rel, s in sums.items() if s.sha256_parts}
    shards[SIGNATURE_NAME] = own.sha256_parts
    all_sizes = {**sizes, SIGNATURE_NAME: len(model_sig)}
    parts = shard_resources(shards, all_sizes, part_size)
    parts_ser = Serialization("shards", part_size, ignore_paths=IGNORED)
    parts_sig = _bundle(key, statement_payload(name, parts_ser, parts))
    entry = ManifestFile(SIGNATURE_NAME, len(model_sig), own.xxh3, part_size, tuple(own.xxh3_parts))
    return Signatures(model_sig, parts_sig, entry, f"sha256:{root_digest(files)}")


def _bundle(key: SigningKey, payload: bytes) -> bytes:
    signature, material = key.sign(payload)
    return bundle_json(payload, signature, material)
