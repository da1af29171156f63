"""What the engine is asked to fetch: an object and what its bytes must hash to.

Plain values, built by `commands/expected.py` from the manifest or S3's checksums and consumed
by `engine.py`; kept apart so that building them needs nothing of the engine.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from fetcher.errors import ChecksumMismatch
from fetcher.source.base import RemoteObject

# Full-object checksums we can recompute locally, best first. CRC32C needs a native library
# we do not ship; an object with only that one is pinned by ETag and reported unverified.
S3_ALGORITHMS = {"ChecksumSHA256": "sha256", "ChecksumSHA1": "sha1", "ChecksumCRC32": "crc32"}
_COMPOSITE = re.compile(r"-\d+$")


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

    def check(self, rel: str, digest: str, s3_sum: str | None) -> None:
        """The whole file's xxh3 and S3 checksum (computed by the caller) against these."""
        if self.xxh3 is not None and digest != self.xxh3:
            raise ChecksumMismatch(rel, self.xxh3, digest)
        if self.s3_value is not None and s3_sum != self.s3_value:
            raise ChecksumMismatch(rel, f"{self.s3_algorithm} {self.s3_value}", str(s3_sum))


@dataclass(slots=True)
class Job:
    obj: RemoteObject
    expected: Expected = field(default_factory=Expected)


def s3_expected(sums: Mapping[str, str]) -> Expected | None:
    """The best full-object checksum among `sums` (HEAD's Checksum* fields), if any."""
    for name, algo in S3_ALGORITHMS.items():
        value = sums.get(name)
        # "<base64>-<parts>" is a checksum of part checksums (a composite multipart upload),
        # which servers may return without ChecksumType; it says nothing about the bytes.
        if value and not _COMPOSITE.search(value):
            return Expected(source=f"s3:{algo}", s3_algorithm=algo, s3_value=value)
    return None
