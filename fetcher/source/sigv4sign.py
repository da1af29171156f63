"""SigV4 for the control plane's bodyless S3 requests, by hmac and hashlib (issue 14).

botocore.auth did this before. Importing it pulls botocore's utilities, urllib3 and, through
urllib3.contrib.pyopenssl, cryptography: measured at ~150 ms of wall time alone and ~55 ms of
a 1-file fetch's `python -X importtime` (of ~0.3 s), on every pod start. What is here follows
botocore's S3SigV4Auth (headers) and S3SigV4QueryAuth (presigned URLs) for GET and HEAD
without a body; tests/unit/test_sigv4sign.py compares the two for the same inputs, and the
SeaweedFS tests exercise it end to end.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import SplitResult, parse_qsl, quote, urlsplit

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()  # the payload hash of a bodyless request
_ALGORITHM = "AWS4-HMAC-SHA256"
# Headers a proxy may rewrite, which botocore leaves unsigned (its SIGNED_HEADERS_BLACKLIST).
_UNSIGNED_HEADERS = frozenset(
    [
        "baggage",
        "connection",
        "expect",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "traceparent",
        "tracestate",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "x-amzn-trace-id",
    ]
)


@dataclass(frozen=True)
class Credentials:
    """Static keys, never logged."""

    access_key: str
    secret_key: str
    token: str | None = None


def sign_headers(
    creds: Credentials,
    region: str,
    method: str,
    url: str,
    headers: Mapping[str, str],
    now: float | None = None,
) -> dict[str, str]:
    """`headers` plus the date, payload hash, token and Authorization of a signed request."""
    stamp = _stamp(now)
    out = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    out["X-Amz-Date"] = stamp
    if creds.token:
        out["X-Amz-Security-Token"] = creds.token
    out["X-Amz-Content-SHA256"] = EMPTY_SHA256
    parts = urlsplit(url)
    signed = {k.lower(): v for k, v in out.items() if k.lower() not in _UNSIGNED_HEADERS}
    signed.setdefault("host", _host(parts))
    canonical = _canonical(method, parts, parts.query, signed, EMPTY_SHA256)
    signature = _signature(creds, region, stamp, canonical)
    out["Authorization"] = (
        f"{_ALGORITHM} Credential={creds.access_key}/{_scope(stamp, region)}, "
        f"SignedHeaders={';'.join(sorted(signed))}, Signature={signature}"
    )
    return out


def presign(
    creds: Credentials,
    region: str,
    url: str,
    expires: int,
    now: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> str:
    """`url` (a GET) with the query parameters that make it valid alone for `expires` s;
    `headers` are signed too, so the request must send them as given (x-amz-checksum-mode:
    S3 rejects an unsigned x-amz-* header on a presigned URL)."""
    stamp = _stamp(now)
    parts = urlsplit(url)
    signed = {"host": _host(parts), **{k.lower(): v for k, v in (headers or {}).items()}}
    scope = f"{creds.access_key}/{_scope(stamp, region)}"
    query = _presign_query(
        parts.query, scope, stamp, expires, ";".join(sorted(signed)), creds.token
    )
    canonical = _canonical("GET", parts, query, signed, "UNSIGNED-PAYLOAD")
    signature = _signature(creds, region, stamp, canonical)
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"
    return f"{base}?{query}&X-Amz-Signature={signature}"


@functools.lru_cache(maxsize=16)
def _presign_query(
    own: str, scope: str, stamp: str, expires: int, names: str, token: str | None
) -> str:
    """The query of a presigned URL but its signature: the same for every key signed in one
    second (a many-file fetch presigns one URL per object; quoting it each time was ~40 %
    of presign's cost)."""
    auth = {
        "X-Amz-Algorithm": _ALGORITHM,
        "X-Amz-Credential": scope,
        "X-Amz-Date": stamp,
        "X-Amz-Expires": str(expires),
        "X-Amz-SignedHeaders": names,
    }
    if token is not None:
        auth["X-Amz-Security-Token"] = token
    # The operation's own parameters first, then the auth ones, each encoded as botocore does.
    pairs = [*parse_qsl(own, keep_blank_values=True), *auth.items()]
    return "&".join(f"{_quote(k)}={_quote(v)}" for k, v in pairs)


def _canonical(
    method: str, parts: SplitResult, query: str, signed: Mapping[str, str], payload: str
) -> str:
    names = sorted(signed)
    lines = [
        method.upper(),
        parts.path,
        _canonical_query(query),
        "".join(f"{n}:{' '.join(signed[n].split())}\n" for n in names),
        ";".join(names),
        payload,
    ]
    return "\n".join(lines)


@functools.lru_cache(maxsize=16)
def _canonical_query(query: str) -> str:
    # S3 signs the path as sent (no normalisation) and the query's pairs sorted, as sent.
    pairs = sorted(p.partition("=")[::2] for p in query.split("&")) if query else []
    return "&".join(f"{k}={v}" for k, v in pairs)


def _signature(creds: Credentials, region: str, stamp: str, canonical: str) -> str:
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    to_sign = f"{_ALGORITHM}\n{stamp}\n{_scope(stamp, region)}\n{digest}"
    key = _signing_key(creds.secret_key, stamp[:8], region)
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


@functools.lru_cache(maxsize=4)
def _signing_key(secret: str, day: str, region: str) -> bytes:
    """The day's derived key: four HMACs once a day, not per presigned URL (a many-file
    fetch presigns one URL per object)."""
    key = f"AWS4{secret}".encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.digest(key, part.encode(), "sha256")
    return key


def _scope(stamp: str, region: str) -> str:
    return f"{stamp[:8]}/{region}/s3/aws4_request"


def _stamp(now: float | None) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))


def _host(parts: SplitResult) -> str:
    """The Host header as botocore signs it: lower case, no default port, no user info."""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return host if parts.port in (None, default) else f"{host}:{parts.port}"


def _quote(text: str) -> str:
    return quote(text, safe="-_.~")
