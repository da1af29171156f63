"""What the engine is asked to fetch: an object and what its bytes must hash to.

Plain values, built by `commands/expected.py` from the manifest or S3's checksums and consumed
by `engine.py`; kept apart so that building them needs nothing of the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fetcher.source.base import RemoteObject


@dataclass(frozen=True, slots=True)
class Expected:
    """What the publisher's manifest (or S3) says the bytes must hash to."""

    xxh3: str | None = None
    part_size: int | None = None
    parts: tuple[str, ...] = ()
    source: str = "none"  # manifest, s3:<algorithm>, none
    s3_algorithm: str | None = None  # sha256, sha1, crc32: S3's full-object checksum
    s3_value: str | None = None  # base64, as S3 returns it
    # sha256 of each part, from a verified .model-parts.sig (issue 12); checked as the part
    # arrives, hashed in the same writer thread as its xxh3.
    sha256_parts: tuple[str, ...] = ()


@dataclass(slots=True)
class Job:
    obj: RemoteObject
    expected: Expected = field(default_factory=Expected)
