"""The S3 control plane without an SDK client: SigV4 from sigv4sign.py, requests by urllib.

Used when the pod gives static keys (or anonymous access), which is the platform's case; see
base.py for why. Here: the four requests a fetch makes (ListObjectsV2, HEAD, GET of the
manifest, and presigned GET URLs for the byte path) and the parsing of their answers. The
signing is hand-written (sigv4sign.py says why: botocore.auth's import cost at every start).
"""

from __future__ import annotations

import random
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from functools import partial
from types import TracebackType
from urllib.parse import quote, unquote_plus, urlencode
from xml.etree import ElementTree

from fetcher.config import Config
from fetcher.errors import (
    FetchError,
    ObjectNotFound,
    SourceUnreachable,
    TLSFailure,
    TransientSourceError,
)
from fetcher.source.base import (
    CHECKSUM_MODE,
    ObjectHead,
    RemoteObject,
    header_checksums,
    listed_object,
    nonempty,
    with_key_source,
)
from fetcher.source.proxy import routed, urllib_opener
from fetcher.source.s3errors import not_s3, s3_error_from_body
from fetcher.source.sigv4sign import Credentials, presign, sign_headers
from fetcher.tasks import in_daemon_thread
from fetcher.tls import tls_failure

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_ATTEMPTS = 3  # like botocore's standard retry mode for the control plane
_MAX_BODY = 256 << 20  # the manifest's own ceiling (integrity.MAX_MANIFEST)


class SignedSource:
    def __init__(self, cfg: Config) -> None:
        self.cfg, self.bucket = cfg, cfg.bucket
        self.endpoint = (cfg.endpoint or f"https://s3.{cfg.region}.amazonaws.com").rstrip("/")
        self.creds = (
            None
            if cfg.anonymous
            else Credentials(str(cfg.access_key), str(cfg.secret_key), cfg.session_token)
        )
        self.ssl = cfg.ssl_context()
        # The route is decided once, by proxy.py's rule (curl's), not by urllib's own.
        self.proxy = cfg.proxies.for_url(self.endpoint)
        self.opener = urllib_opener(self.ssl)

    async def __aenter__(self) -> SignedSource:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def _url(self, key: str = "", query: Mapping[str, str] | None = None) -> str:
        path = f"/{self.bucket}" + (f"/{quote(key, safe='/~')}" if key else "")
        # SigV4's canonical query is RFC 3986 (a space is %20), and botocore signs the query
        # exactly as written here: urlencode's default form encoding ("+") breaks the signature.
        encoded = urlencode(query, quote_via=quote, safe="~") if query else ""
        return self.endpoint + path + (f"?{encoded}" if encoded else "")

    # -- requests --------------------------------------------------------------------------
    def _signed(self, method: str, url: str, headers: Mapping[str, str]) -> urllib.request.Request:
        signed = dict(headers)
        if self.creds is not None:
            signed = sign_headers(self.creds, self.cfg.region, method, url, headers)
        return routed(urllib.request.Request(url, method=method, headers=signed), self.proxy)

    def _send(
        self, method: str, url: str, what: str, headers: Mapping[str, str] | None = None
    ) -> tuple[Mapping[str, str], bytes]:
        """One request with its retries, in a worker thread; errors mapped into ours."""
        attempt = 1
        while True:
            try:
                return self._once(method, url, what, headers or {})
            except TLSFailure:
                raise  # a certificate does not become trusted by asking again
            except (TransientSourceError, SourceUnreachable):
                if attempt == _ATTEMPTS:
                    raise
            time.sleep(random.uniform(0, 0.2 * 2**attempt))
            attempt += 1

    def _once(
        self, method: str, url: str, what: str, headers: Mapping[str, str]
    ) -> tuple[Mapping[str, str], bytes]:
        timeout = self.cfg.connect_timeout + self.cfg.read_timeout
        try:
            with self.opener.open(self._signed(method, url, headers), timeout=timeout) as resp:
                return dict(resp.headers.items()), resp.read(_MAX_BODY + 1)
        except urllib.error.HTTPError as exc:
            raise with_key_source(_http_error(exc, what), self.cfg) from None
        except urllib.error.URLError as exc:
            raise self._unreachable(exc.reason) from None
        except (TimeoutError, ConnectionError, OSError) as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, reason: object) -> FetchError:
        if isinstance(reason, ssl.SSLError):
            return tls_failure(reason, self.endpoint, self.cfg.tls_hint)
        text = getattr(reason, "strerror", None) or str(reason)
        return SourceUnreachable(f"cannot reach {self.endpoint}: {text}")

    async def _call(
        self, method: str, url: str, what: str, headers: Mapping[str, str] | None = None
    ) -> tuple[Mapping[str, str], bytes]:
        return await in_daemon_thread(partial(self._send, method, url, what, headers))

    # -- the four operations -----------------------------------------------------------------
    async def list_prefix(self, prefix: str) -> list[RemoteObject]:
        found: list[RemoteObject] = []
        token: str | None = None
        while True:
            query = {"list-type": "2", "prefix": prefix, "encoding-type": "url"}
            if token:
                query["continuation-token"] = token
            headers, body = await self._call(
                "GET", self._url(query=query), f"list s3://{self.bucket}/{prefix}"
            )
            kind = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
            if kind and "xml" not in kind:
                raise not_s3(kind)  # read as XML, an HTML page was an empty listing
            page, token = _parse_listing(body, prefix)
            found += page
            if not token:
                break
        return nonempty(found, self.bucket, prefix)

    async def _head(self, key: str, headers: Mapping[str, str] | None = None) -> dict[str, str]:
        """HEAD of `key`: its response headers, names lower-cased."""
        found, _ = await self._call(
            "HEAD", self._url(key), f"head s3://{self.bucket}/{key}", headers
        )
        return {k.lower(): v for k, v in found.items()}

    async def head(self, key: str, *, checksums: bool = False) -> ObjectHead | None:
        try:
            lower = await self._head(key, CHECKSUM_MODE if checksums else None)
        except ObjectNotFound:
            return None
        return ObjectHead(
            size=int(lower.get("content-length", "0")),
            etag=lower.get("etag", ""),
            metadata=_user_metadata(lower),
            checksums=header_checksums(lower),
            version_id=lower.get("x-amz-version-id") or None,
        )

    async def get_bytes(
        self, key: str, etag: str | None = None, version_id: str | None = None
    ) -> bytes:
        headers = {"If-Match": etag} if etag else {}
        url = self._url(key, _version(version_id))
        _, body = await self._call("GET", url, f"get s3://{self.bucket}/{key}", headers)
        return body

    async def presign_get(
        self, key: str, expires: int = 3600, version_id: str | None = None, checksums: bool = False
    ) -> str:
        url = self._url(key, _version(version_id))
        if self.creds is None:
            return url
        headers = CHECKSUM_MODE if checksums else None
        return presign(self.creds, self.cfg.region, url, expires, headers=headers)


def _version(version_id: str | None) -> dict[str, str] | None:
    return {"versionId": version_id} if version_id else None


def _parse_listing(body: bytes, prefix: str) -> tuple[list[RemoteObject], str | None]:
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError as exc:
        raise TransientSourceError(f"unreadable listing: {exc}", reason="protocol") from None
    page = []
    for item in root.iter(f"{_NS}Contents"):
        # encoding-type=url is form encoding: a space comes back as "+" (botocore reads it
        # the same way), a literal "+" as %2B.
        key = unquote_plus(item.findtext(f"{_NS}Key") or "")
        size = int(item.findtext(f"{_NS}Size") or "0")
        obj = listed_object(key, size, item.findtext(f"{_NS}ETag") or "", prefix)
        if obj is not None:
            page.append(obj)
    truncated = (root.findtext(f"{_NS}IsTruncated") or "false") == "true"
    return page, (root.findtext(f"{_NS}NextContinuationToken") if truncated else None)


def _http_error(exc: urllib.error.HTTPError, what: str) -> FetchError:
    body = exc.read(64 << 10) if exc.fp is not None else b""
    return s3_error_from_body(exc.code, body, what)


def _user_metadata(headers: Mapping[str, str]) -> dict[str, str]:
    return {k[len("x-amz-meta-") :]: v for k, v in headers.items() if k.startswith("x-amz-meta-")}
