"""S3 error codes mapped into our exception tree; shared by the botocore control plane
(`source.py`) and the raw byte path (`rangeget.py`), and free of botocore so that worker
processes start without importing it."""

from __future__ import annotations

from .errors import (
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


def map_s3_error(status: int, code: str, message: str, what: str) -> FetchError:
    """Pick the most specific error of ours for an S3 error response (also used by rangeget)."""
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
