"""TLS contexts and TLS failures, shared by every client (control planes and the byte path).

Whether TLS is used at all is decided once, by `Config.https`; this module only builds the
context that decision asks for, and words the failure the same way whichever client met it.
"""

from __future__ import annotations

import os
import ssl
from contextlib import suppress
from functools import cache

from fetcher.errors import TLSFailure

# OpenSSL's reasons when the peer answers a ClientHello in plain HTTP.
_NOT_TLS = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "HTTP_REQUEST"})


DEFAULT_HINT = "set MINIO_CA_BUNDLE, or MINIO_TLS_VERIFY=false"


def tls_failure(exc: ssl.SSLError, where: str, hint: str = DEFAULT_HINT) -> TLSFailure:
    """One message for a TLS failure, whichever client met it, saying how to fix it
    (`hint`: Config.tls_hint, which names the CA variable the user set)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TLSFailure(f"TLS certificate of {where} not trusted: {exc.verify_message} ({hint})")
    if exc.reason in _NOT_TLS:
        return TLSFailure(
            f"{where} answered without TLS: use http:// in the endpoint URL "
            "(a host:port without a scheme means https unless S3_USE_HTTPS=0)"
        )
    return TLSFailure(f"TLS error with {where}: {exc.reason}")


def tls_context(verify: bool, ca_bundle: str | None) -> ssl.SSLContext:
    """One context per setting and bundle version: loading the certificates costs ~16 ms,
    and config's check, the control plane and the byte path all want the same one; a rotated
    bundle (a long-lived sidecar's re-lists) is a new version, loaded again."""
    version = None
    if verify and ca_bundle:
        with suppress(OSError):
            version = os.stat(ca_bundle).st_mtime_ns
    return _tls_context(verify, ca_bundle, version)


@cache
def _tls_context(verify: bool, ca_bundle: str | None, _version: int | None) -> ssl.SSLContext:
    if not verify:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return (
        ssl.create_default_context(cafile=ca_bundle) if ca_bundle else ssl.create_default_context()
    )
