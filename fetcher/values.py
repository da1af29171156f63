"""Value parsers for settings: pure, each raises ValueError with a phrase that follows "NAME: ".

Sizes and durations are `units.py`'s; here are the settings' own shapes (S3 URIs, prefixes,
bucket names, URLs, ranges, choices).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

from fetcher.units import MAX_SECONDS, GiB, KiB, parse_duration, parse_size

# Ranged GETs have no minimum size; 64 KiB keeps tests fast. S3 multipart *uploads* need
# parts of at least 5 MiB (except the last), so publish must round small part sizes up.
MIN_PART_SIZE, MAX_PART_SIZE = 64 * KiB, 5 * GiB

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4 = re.compile(r"\d+\.\d+\.\d+\.\d+")

L = TypeVar("L", bound=str)
T = TypeVar("T")


def normalise_prefix(p: str) -> str:
    """A key prefix as a directory: "v1" and "/v1/" become "v1/", "" stays "".

    Empty, "." and ".." components are rejected rather than collapsed: "a//b" names a
    different set of keys than "a/b", and guessing which one was meant would fetch the
    wrong model.
    """
    path = p.lstrip("/")
    if not path:
        return ""
    parts = path.removesuffix("/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError("expected a key prefix without empty, '.' or '..' components")
    return "/".join(parts) + "/"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """("bucket", "prefix/") from "s3://bucket/prefix/"; "minio://" is accepted as a synonym."""
    scheme, sep, rest = uri.strip().partition("://")
    if not sep or scheme.lower() not in ("s3", "minio"):
        raise ValueError("expected s3://BUCKET/PREFIX/")
    bucket, _, prefix = rest.partition("/")
    return bucket_name(bucket), normalise_prefix(prefix)


def bucket_name(name: str) -> str:
    bad_pair = any(pair in name for pair in ("..", ".-", "-."))
    if not _BUCKET.fullmatch(name) or bad_pair or _IPV4.fullmatch(name):
        raise ValueError("expected a bucket name of 3-63 lowercase letters, digits, dots, hyphens")
    return name


def http_url(text: str, default_scheme: str | None = None) -> str:
    # Checked before parsing: a password must not reach any message, however malformed.
    if "@" in text:
        raise ValueError("credentials in the URL are not allowed (use the access key variables)")
    if "://" not in text and default_scheme:
        text = f"{default_scheme}://{text}"
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError("expected an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("expected a URL with a host")
    try:
        parts.port  # noqa: B018 - the property validates the port
    except ValueError:
        raise ValueError("expected a port 1..65535") from None
    if parts.query or parts.fragment:
        raise ValueError("expected a URL without query or fragment")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not re.fullmatch(r"[+-]?\d+", text.strip()) or not low <= int(text) <= high:
            raise ValueError(f"expected an integer {low}..{high}")
        return int(text)

    return parse


def choice(options: tuple[L, ...], aliases: Mapping[str, L] | None = None) -> Callable[[str], L]:
    def parse(text: str) -> L:
        word = text.strip().lower()
        for option in options:
            if word == option:
                return option
        if aliases and word in aliases:
            return aliases[word]
        raise ValueError("expected one of " + ", ".join(options))

    return parse


def seconds(text: str) -> float:
    value = parse_duration(text)
    if not 0 < value <= MAX_SECONDS:
        raise ValueError("expected a duration above zero and at most 168h, such as 10s or 5m")
    return value


def region(text: str) -> str:
    # Part of every signature: a malformed one only surfaces later as "check the credentials".
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", text.strip()):
        raise ValueError("expected a region name such as us-east-1")
    return text.strip()


def part_size(text: str) -> int:
    size = parse_size(text)
    if not MIN_PART_SIZE <= size <= MAX_PART_SIZE:
        raise ValueError("expected a size from 64KiB to 5GiB")
    return size


def absolute(text: str) -> Path:
    if not text.strip():
        raise ValueError("expected a path")
    return Path(os.path.abspath(text))
