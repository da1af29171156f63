"""When a fetched file must be read back for its whole-file check (transfer._needs_read_back),
and what the cache records otherwise: the rule behind "no read-back when the parts prove it"."""

from __future__ import annotations

import pytest

from fetcher.transfer.engine import _needs_read_back
from fetcher.transfer.plan import Expected

PARTS = ("a" * 32, "b" * 32, "c" * 32)


@pytest.mark.parametrize(
    ("expected", "nparts", "read_back"),
    [
        (Expected(xxh3="f" * 32, part_size=8, parts=PARTS, source="manifest"), 3, False),
        # A manifest whose parts do not cover the file proves nothing part by part.
        (Expected(xxh3="f" * 32, part_size=8, parts=PARTS[:2], source="manifest"), 3, True),
        (Expected(xxh3="f" * 32, source="manifest"), 3, True),
        # S3's full-object checksums can only be computed over the bytes in order.
        (Expected(source="s3:sha256", s3_algorithm="sha256", s3_value="x"), 3, True),
        (Expected(source="s3:crc32", s3_algorithm="crc32", s3_value="x"), 1, True),
        # Nothing to check against: the digest is the composite of the parts' digests.
        (Expected(), 3, False),
    ],
    ids=["manifest-parts", "manifest-short", "manifest-no-parts", "sha256", "crc32", "none"],
)
def test_needs_read_back(expected: Expected, nparts: int, read_back: bool) -> None:
    assert _needs_read_back(expected, nparts) is read_back
