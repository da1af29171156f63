"""Sizes and durations as people write them, one rule for the whole tree (issue 17).

Used by the configuration, the bench and the devtools alike: K, M, G, T (with or without B)
are powers of 1000, Ki, Mi, Gi, Ti (with or without B) powers of 1024, as in Kubernetes
quantities. Parsers are pure and raise ValueError with a phrase that follows "NAME: ".
"""

from __future__ import annotations

import re
from fractions import Fraction

KiB, MiB, GiB = 2**10, 2**20, 2**30
MAX_SECONDS = 7 * 24 * 3600.0  # beyond this, event-loop timers overflow, and no wait is meant

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([kmgt])(i?)b?|b)?", re.IGNORECASE)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise ValueError("expected one of 1, true, yes, on, 0, false, no, off")


def parse_size(text: str) -> int:
    """Bytes in "32MiB", "32Mi", "8M", "8MB", "512KiB", "1GB" or "1048576".

    K, M, G, T (with or without B) are powers of 1000; Ki, Mi, Gi, Ti (with or without B)
    powers of 1024, as in Kubernetes quantities.
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError("expected a size such as 32MiB, 8M or a byte count")
    number, letter, binary = match.groups()
    power = "kmgt".index(letter.lower()) + 1 if letter else 0
    size = Fraction(number) * (1024 if binary else 1000) ** power
    if size.denominator != 1:
        raise ValueError("expected a whole number of bytes")
    return int(size)


def parse_duration(text: str) -> float:
    """Seconds in "10", "10s", "1.5s", "500ms", "5m", "1h" or "1h30m"."""
    word = text.strip().lower()
    if _NUMBER.fullmatch(word):
        return float(word)
    if not _DURATION.fullmatch(word):
        raise ValueError("expected a duration such as 10s, 1.5s, 500ms, 5m or 1h")
    return sum(float(n) * _SECONDS[unit] for n, unit in _DURATION_PART.findall(word))
