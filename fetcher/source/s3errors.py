"""S3 error codes mapped into our exception tree; shared by the control planes (`boto.py`,
`sigv4.py`) and the raw byte path (`transfer/http.py`), and free of botocore so that worker
processes start without importing it."""

from __future__ import annotations

import re

from fetcher.errors import (
    AccessDenied,
    FetchError,
    ObjectChanged,
    ObjectNotFound,
    SourceError,
    TransientSourceError,
)

_TRANSIENT_CODES = {
    "SlowDown",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeTooSkewed",
    "Throttling",
    "ThrottlingException",
}
_DENIED_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AllAccessDisabled",
}
_MISSING_CODES = {"NoSuchBucket", "NoSuchKey", "NotFound", "404"}
# Searched, not parsed: an error body may arrive cut short, and the code is all that matters.
_XML_CODE = re.compile(rb"<Code>([^<]{1,128})</Code>")
_XML_MESSAGE = re.compile(rb"<Message>([^<]{0,512})</Message>")


def map_s3_error(status: int, code: str, message: str, what: str) -> FetchError:
    """Pick the most specific error of ours for an S3 error response."""
    label = code or str(status)
    if code in _DENIED_CODES or status in (401, 403):
        return AccessDenied(f"access denied for {what} ({label}); check the credentials")
    if code in _MISSING_CODES or status == 404:
        return ObjectNotFound(f"not found: {what} ({label})")
    if code == "PreconditionFailed" or status == 412:
        return ObjectChanged(f"{what} changed on the server while it was being fetched")
    if code in _TRANSIENT_CODES or status >= 500:
        return TransientSourceError(f"{what}: {label} {message}".strip(), reason=label)
    return SourceError(f"{what}: {label} {message}".strip())


# What Go's net/http (MinIO, SeaweedFS) and nginx answer to plain HTTP on a TLS port.
_PLAIN_TO_TLS = (b"HTTP request to an HTTPS server", b"plain HTTP request was sent to HTTPS")


def not_s3(content_type: str) -> SourceError:
    """A 200 that is not S3's XML: a web console (MinIO's on 9001) or another web server."""
    return SourceError(
        f"the endpoint did not answer like S3 (Content-Type {content_type or 'none'}): "
        "is this the API port (9000), not the console (9001)?"
    )


def s3_error_from_body(status: int, body: bytes, what: str) -> FetchError:
    """`map_s3_error` for a raw error response: its XML body's Code and Message, if any."""
    if status == 400 and any(text in body for text in _PLAIN_TO_TLS):
        return SourceError(f"{what}: the endpoint speaks TLS: use https:// in the endpoint URL")
    code = _XML_CODE.search(body)
    message = _XML_MESSAGE.search(body)
    return map_s3_error(
        status,
        code.group(1).decode(errors="replace") if code else "",
        message.group(1).decode(errors="replace") if message else "",
        what,
    )
