"""One TLS decision (`Config.https`) and what every client makes of it (issues 12 and 17).

The real-AWS default (no endpoint) is https: every client must verify certificates there.
Before issue 17, `source.client_kwargs` passed `verify=False` whenever no endpoint was set.
Creating a client opens no connection, so these tests make no network traffic at all.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from fetcher.config import Config
from fetcher.source.boto import Source, tls_verify_setting
from fetcher.source.sigv4 import SignedSource
from fetcher.transfer.engine import make_getter
from fetcher.transfer.workers import split_limit

KEYS = {"access_key": "AKIAEXAMPLE", "secret_key": "not-a-real-secret"}


def _cfg(**kw: object) -> Config:
    return Config(dest=Path("/tmp/unused"), bucket="llm-models", **KEYS, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("endpoint", "https"),
    [(None, True), ("https://minio:9000", True), ("http://minio:9000", False)],
)
def test_https_is_decided_once(endpoint: str | None, https: bool) -> None:
    assert _cfg(endpoint=endpoint).https is https


def _botocore_verify(cfg: Config) -> object:
    async def effective() -> object:
        async with Source(cfg) as src:
            return src._client._endpoint.http_session._verify

    return asyncio.run(effective())


def test_aws_default_client_verifies_certificates() -> None:
    cfg = _cfg()
    assert tls_verify_setting(cfg) is True
    assert _botocore_verify(cfg) is True
    signed = SignedSource(cfg)
    assert signed.ssl is not None and signed.ssl.verify_mode == ssl.CERT_REQUIRED
    ctx = make_getter(cfg, 1).ssl_context
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def test_verification_off_only_when_asked() -> None:
    cfg = _cfg(endpoint="https://minio:9000", tls_verify=False)
    assert _botocore_verify(cfg) is False
    signed = SignedSource(cfg)
    assert signed.ssl is not None and signed.ssl.verify_mode == ssl.CERT_NONE


def test_plain_http_builds_no_tls_context() -> None:
    cfg = _cfg(endpoint="http://minio:9000")
    assert SignedSource(cfg).ssl is None
    assert make_getter(cfg, 1).ssl_context is None
    # botocore must not load a global AWS_CA_BUNDLE for a connection without TLS.
    assert _botocore_verify(cfg) is False


@pytest.mark.parametrize(("concurrency", "workers"), [(16, 3), (16, 1), (2, 5), (17, 4)])
def test_worker_shares_sum_to_the_concurrency(concurrency: int, workers: int) -> None:
    shares = split_limit(concurrency, workers)
    assert sum(shares) == concurrency
    assert min(shares) >= 1 and max(shares) - min(shares) <= 1
