"""The hand-written SigV4 (fetcher/source/sigv4sign.py) signs exactly as botocore does.

botocore is the reference (it stays installed with aiobotocore): for the same request, keys
and instant, both must produce the same headers and the same presigned URL, character for
character. botocore's clock is pinned to that instant (the only thing replaced here); the
signatures are also accepted by SeaweedFS in the integration tests (list, head, get, presign).
"""

from __future__ import annotations

import datetime
from urllib.parse import quote, urlencode

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest

from fetcher.source.sigv4sign import Credentials, presign, sign_headers

NOW = 1796188000.0
CREDS = [
    Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
    Credentials("fetcher-test-access", "s3cr3t/with+chars", token="FwoGZXIvYXdzE//token=="),
]
ENDPOINTS = ["http://127.0.0.1:8333", "https://s3.eu-west-1.amazonaws.com", "http://Minio:80"]
KEYS = ["models/llama/model-00001-of-00002.safetensors", "a b/ü+%/x~y(1).bin", ""]
QUERIES = [
    None,
    {"list-type": "2", "prefix": "models/a b+ü/", "encoding-type": "url"},
    {"list-type": "2", "prefix": "p/", "continuation-token": "1/abc+=="},
    {"versionId": "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY"},
]
HEADERS = [
    {},
    {"If-Match": '"9b2cf535f27731c974343645a3985328"'},
    {"x-amz-checksum-mode": "ENABLED", "Range": "bytes=0-1023"},
]


@pytest.fixture(autouse=True)
def _pinned_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    at = datetime.datetime.fromtimestamp(NOW, datetime.UTC).replace(tzinfo=None)
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda *a, **k: at)


def _url(endpoint: str, key: str, query: dict[str, str] | None) -> str:
    """Built as SignedSource._url builds it."""
    path = "/bucket" + (f"/{quote(key, safe='/~')}" if key else "")
    return endpoint + path + (f"?{urlencode(query)}" if query else "")


@pytest.mark.parametrize("creds", CREDS)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("query", QUERIES)
@pytest.mark.parametrize("headers", HEADERS)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_headers_match_botocore(
    creds: Credentials,
    endpoint: str,
    key: str,
    query: dict[str, str] | None,
    headers: dict[str, str],
    method: str,
) -> None:
    url = _url(endpoint, key, query)
    req = AWSRequest(method=method, url=url, headers=dict(headers))
    S3SigV4Auth(creds, "s3", "eu-west-1").add_auth(req)
    ours = sign_headers(creds, "eu-west-1", method, url, headers, now=NOW)
    assert ours == dict(req.headers.items())


@pytest.mark.parametrize("creds", CREDS)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("key", KEYS[:2])
@pytest.mark.parametrize("query", [None, QUERIES[3]])
@pytest.mark.parametrize("expires", [1, 3600, 604800])
@pytest.mark.parametrize("headers", [{}, {"x-amz-checksum-mode": "ENABLED"}])
def test_presigned_url_matches_botocore(
    creds: Credentials,
    endpoint: str,
    key: str,
    query: dict[str, str] | None,
    expires: int,
    headers: dict[str, str],
) -> None:
    url = _url(endpoint, key, query)
    req = AWSRequest(method="GET", url=url, headers=dict(headers))
    S3SigV4QueryAuth(creds, "s3", "us-east-1", expires=expires).add_auth(req)
    assert presign(creds, "us-east-1", url, expires, now=NOW, headers=headers) == req.url


def test_a_different_secret_changes_the_signature() -> None:
    """The comparison above would pass for a signer that ignored its key: this one would not."""
    url = _url(ENDPOINTS[0], KEYS[0], None)
    one = sign_headers(CREDS[0], "us-east-1", "GET", url, {}, now=NOW)["Authorization"]
    other = Credentials(CREDS[0].access_key, CREDS[0].secret_key + "x")
    assert one != sign_headers(other, "us-east-1", "GET", url, {}, now=NOW)["Authorization"]
