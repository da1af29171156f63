"""What the fetch needs from the S3 side, and which implementation provides it.

    ControlPlane          list, head, the manifest GET, presigned GET URLs
    ├─ SignedSource       (sigv4.py) SigV4 (sigv4sign.py) over urllib: static keys or
    │                     anonymous, the pod's usual case; no aiobotocore, no aiohttp
    └─ Source             (boto.py) aiobotocore: botocore's whole credential chain (IRSA,
                          web identity, shared config) and the uploads of `publish`

`factory.open_source` picks one.

Importing aiobotocore and creating its client cost ~0.35 CPU-s at every start here (measured
with -X importtime and cProfile: 0.25 s of imports, 0.08 s of client creation), about 10 % of a
4 GiB fetch and most of a warm start, so the common case does without it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

from fetcher.config import Config
from fetcher.errors import AccessDenied, FetchError, ObjectNotFound


@dataclass(frozen=True, slots=True)
class RemoteObject:
    """One listed object; `rel` is its key relative to the prefix (the path under DEST)."""

    key: str
    rel: str
    size: int
    etag: str
    version_id: str | None = None  # an S3 object version pinned by the manifest (issue 15)


CHECKSUM_NAMES = {  # header suffix -> S3's field name (as botocore spells it)
    "sha256": "ChecksumSHA256",
    "crc32": "ChecksumCRC32",
    "crc32c": "ChecksumCRC32C",
    "sha1": "ChecksumSHA1",
}


@dataclass(frozen=True, slots=True)
class ObjectHead:
    """A HEAD answer, the same whichever control plane asked."""

    size: int
    etag: str
    metadata: Mapping[str, str] = field(default_factory=dict)  # x-amz-meta-*, names lower-case
    # Full-object checksums only, by S3's field name (ChecksumSHA256, ...), base64 as S3 sends.
    checksums: Mapping[str, str] = field(default_factory=dict)
    version_id: str | None = None  # in a versioned bucket, the version HEAD answered for


_MULTIPART_ETAG = re.compile(r"-\d+$")


def full_object_checksums(
    values: Mapping[str, str], checksum_type: str | None, etag: str = ""
) -> dict[str, str]:
    """The checksums that are of the bytes themselves: a composite multipart checksum (type
    COMPOSITE) is a checksum of part checksums and cannot be compared with a download.

    A missing type is not FULL_OBJECT: moto and older servers answer a multipart upload's
    checksum of part checksums without its "-N" and without a type, and taking it for the
    bytes' CRC refused valid models (issue 13). A multipart ETag decides then.
    """
    multipart = bool(_MULTIPART_ETAG.search(etag.strip('"')))
    if checksum_type != "FULL_OBJECT" and (checksum_type is not None or multipart):
        return {}  # cannot be recomputed from the bytes: the file is source_unverified
    return {name: value for name, value in values.items() if value}


# The header that asks S3 for an object's checksums (HEAD, and a whole-object GET).
CHECKSUM_MODE = {"x-amz-checksum-mode": "ENABLED"}


def header_checksums(headers: Mapping[str, str]) -> dict[str, str]:
    """The full-object checksums in a HEAD's or a whole-object GET's headers (names in lower
    case), by S3's field name: one reading for the control plane and the byte path."""
    found = {
        name: headers.get(f"x-amz-checksum-{algo}", "") for algo, name in CHECKSUM_NAMES.items()
    }
    kind = headers.get("x-amz-checksum-type")
    return full_object_checksums(found, kind, headers.get("etag", ""))


def with_key_source(exc: FetchError, cfg: Config) -> FetchError:
    """A wrong-key answer names where the keys came from (variable names only, never values),
    so the message says which Secret to fix."""
    if isinstance(exc, AccessDenied) and cfg.key_source and not cfg.anonymous:
        return AccessDenied(f"{exc} (keys from {cfg.key_source})")
    return exc


def listed_object(key: str, size: int, etag: str, prefix: str) -> RemoteObject | None:
    """A listing entry as a file under the prefix, or None for a "directory marker"."""
    if key.endswith("/") and size == 0:
        return None
    return RemoteObject(key, key[len(prefix) :], size, etag)


def nonempty(found: list[RemoteObject], bucket: str, prefix: str) -> list[RemoteObject]:
    """An empty prefix is a missing model, whichever client listed it."""
    if not found:
        raise ObjectNotFound(f"nothing under s3://{bucket}/{prefix}")
    return found


class ControlPlane(Protocol):
    async def __aenter__(self) -> ControlPlane: ...

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def list_prefix(self, prefix: str) -> list[RemoteObject]: ...

    async def head(self, key: str, *, checksums: bool = False) -> ObjectHead | None:
        """HEAD `key` (None when there is no such object); `checksums` asks S3 for them."""
        ...

    async def get_bytes(
        self, key: str, etag: str | None = None, version_id: str | None = None
    ) -> bytes: ...

    async def presign_get(
        self, key: str, expires: int = 3600, version_id: str | None = None, checksums: bool = False
    ) -> str:
        """A GET URL valid alone for `expires` s; with `checksums` it is signed for
        CHECKSUM_MODE, which the request must then send."""
        ...


async def list_model(src: ControlPlane, prefix: str) -> list[RemoteObject]:
    """The objects under `prefix`, or the one object named by it without its slash.

    KServe accepts a storageUri that names one file (s3://llm-models/gguf/llama.Q4_K_M.gguf);
    it lands as DEST/<its name>. A folder wins over an object of the same name.
    """
    try:
        return await src.list_prefix(prefix)
    except ObjectNotFound:
        key = prefix.removesuffix("/")
        found = await src.head(key) if key else None
        if found is None:
            raise
        return [RemoteObject(key, key.rpartition("/")[2], found.size, found.etag)]
