"""The benchmark's model: generated once, hashed, uploaded with boto3, then removed locally.

Upload cost is not measured. The local copy is deleted after upload so that it neither takes
disk space nor sits in the page cache beside the server's copy.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash
from boto3.s3.transfer import TransferConfig
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from devtools.sample_model import write_sample_model

BUCKET = "bench"
MODEL_PREFIX = "bench-model/v1/"
TINY_PREFIX = "bench-tiny/v1/"
_READ = 8 << 20
_UPLOAD = TransferConfig(
    multipart_threshold=64 << 20, multipart_chunksize=64 << 20, max_concurrency=4
)

MANIFEST = ".model-manifest.json"
SIGNATURES = ("model.sig", ".model-parts.sig")  # written by publish --sign-key
Publisher = Callable[[Path, str], None]  # (local directory, prefix)
Digests = dict[str, str]  # path relative to the prefix -> xxh3-128 hex


@dataclass(frozen=True)
class Uploaded:
    """A model in the bucket: its prefix, the digest of each file, and its total size."""

    prefix: str
    digests: Digests  # the model's files: every tool must write exactly these
    total_bytes: int
    optional: Digests = field(default_factory=dict)  # checked when written, not required


def xxh3_file(path: Path) -> str:
    digest = xxhash.xxh3_128()
    with path.open("rb") as f:
        while chunk := f.read(_READ):
            digest.update(chunk)
    return digest.hexdigest()


def digest_tree(root: Path, exclude: Iterable[str] = ()) -> Digests:
    """xxh3-128 of every regular file under `root`, skipping top-level names in `exclude`."""
    skip = set(exclude)
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] not in skip
    )
    with ThreadPoolExecutor(max_workers=2) as pool:  # xxhash releases the GIL on big buffers
        hashes = pool.map(xxh3_file, files)
        return {p.relative_to(root).as_posix(): h for p, h in zip(files, hashes, strict=True)}


def make_signing_key(workdir: Path) -> tuple[Path, Path]:
    """(private, public) PEM files of a fresh P-256 key for `publish --sign-key`."""
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = workdir / "signer.key", workdir / "signer.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, spki))
    return private, public


def make_model(workdir: Path, total_bytes: int, shards: int) -> Path:
    dest = workdir / "model"
    write_sample_model(dest, total_bytes, shards=shards, seed=0)
    return dest


def make_tiny(workdir: Path) -> Path:
    """A one-file, 1 KiB model directory: what a fetch costs when there is nothing to fetch."""
    dest = workdir / "tiny"
    dest.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"model_type": "bench-tiny", "pad": ""})
    pad = 1024 - len(text)
    (dest / "config.json").write_text(json.dumps({"model_type": "bench-tiny", "pad": "x" * pad}))
    return dest


def upload(client: Any, local: Path, prefix: str, publisher: Publisher | None) -> Uploaded:
    """Upload every file of `local` under `prefix`, then delete `local`.

    With a publisher (`model-fetcher publish`) the upload carries a `.model-manifest.json`.
    It is the fetcher's metadata, not part of the model: copy tools download it, model-fetcher
    need not, so it is checked where present but not required (nor counted in the size).
    """
    digests = digest_tree(local)
    total = sum((local / rel).stat().st_size for rel in digests)
    optional = {}
    if publisher:
        publisher(local, prefix)
        manifest = client.get_object(Bucket=BUCKET, Key=prefix + MANIFEST)["Body"].read()
        optional[MANIFEST] = xxhash.xxh3_128_hexdigest(manifest)
        for name in SIGNATURES:  # there when signed; copy tools fetch them like any object
            with suppress(client.exceptions.NoSuchKey):
                body = client.get_object(Bucket=BUCKET, Key=prefix + name)["Body"].read()
                optional[name] = xxhash.xxh3_128_hexdigest(body)
    else:
        for rel in digests:
            client.upload_file(str(local / rel), BUCKET, prefix + rel, Config=_UPLOAD)
    shutil.rmtree(local)
    return Uploaded(prefix, digests, total, optional)


def ensure_bucket(client: Any) -> None:
    client.create_bucket(Bucket=BUCKET)
