"""The S3 control plane (aiobotocore): list, head, small GETs, presigning, uploads.

This is the only module that imports botocore. Every botocore or socket error is mapped here,
at the boundary, into the tree of `fetcher.errors`, the way httpx maps httpcore's exceptions.
The bulk byte path does not go through botocore: `transfer/http.py` reads presigned ranged GETs.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import urlsplit

from aiobotocore.session import get_session
from botocore import UNSIGNED
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
    SSLError,
)

from fetcher.config import Config
from fetcher.errors import (
    AccessDenied,
    ConfigError,
    FetchError,
    ObjectNotFound,
    SourceError,
    SourceUnreachable,
    TLSFailure,
)
from fetcher.source.base import (
    CHECKSUM_NAMES,
    ObjectHead,
    RemoteObject,
    full_object_checksums,
    listed_object,
    nonempty,
    with_key_source,
)
from fetcher.source.s3errors import map_s3_error, not_s3
from fetcher.tls import DEFAULT_HINT


def map_client_error(exc: ClientError, what: str) -> FetchError:
    err = exc.response.get("Error", {})
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return map_s3_error(status, str(err.get("Code", "")), str(err.get("Message", "")), what)


def map_boto_error(
    exc: BaseException, what: str, endpoint: str | None, tls_hint: str = DEFAULT_HINT
) -> FetchError:
    if isinstance(exc, ClientError):
        return map_client_error(exc, what)
    if isinstance(exc, SSLError | ssl.SSLError):
        return TLSFailure(f"TLS error talking to {endpoint}: {_short(exc)} ({tls_hint})")
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError | ReadTimeoutError):
        return SourceUnreachable(f"cannot reach {endpoint}: {_short(exc)}")
    if isinstance(exc, NoCredentialsError):
        return AccessDenied("no credentials: set MINIO_ACCESS_KEY and MINIO_SECRET_KEY")
    if isinstance(exc, OSError):
        return SourceUnreachable(f"cannot reach {endpoint}: {exc.strerror or exc}")
    return SourceError(f"{what}: {_short(exc)}")


def _short(exc: BaseException) -> str:
    # botocore messages can embed the full request URL; keep the first line, no query string.
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.split("?", 1)[0]


def boto_config(cfg: Config) -> BotoConfig:
    return BotoConfig(
        region_name=cfg.region,
        signature_version=UNSIGNED if cfg.anonymous else "s3v4",
        s3={"addressing_style": "path"},
        # The pool must be at least the concurrency, or botocore silently queues requests.
        max_pool_connections=max(cfg.concurrency, 10),
        connect_timeout=cfg.connect_timeout,
        read_timeout=cfg.read_timeout,
        retries={"mode": "standard", "total_max_attempts": 3},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        proxies=_proxies(cfg),
    )


def _proxies(cfg: Config) -> dict[str, str]:
    """Never None: botocore would read the variables itself, with urllib's NO_PROXY rules."""
    endpoint = cfg.endpoint or f"https://s3.{cfg.region}.amazonaws.com"
    proxy = cfg.proxies.for_url(endpoint)
    return {} if proxy is None else {urlsplit(endpoint).scheme: proxy.to_url()}


def tls_verify_setting(cfg: Config) -> bool | str:
    """botocore's `verify` from the one TLS decision (`Config.https`). The real-AWS default
    (no endpoint) is https and must verify; plain http passes False only so that botocore does
    not load a global AWS_CA_BUNDLE for a connection that has no TLS."""
    if not cfg.https:
        return False
    return (cfg.ca_bundle or True) if cfg.tls_verify else False


def client_kwargs(cfg: Config) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"endpoint_url": cfg.endpoint, "config": boto_config(cfg)}
    kwargs["verify"] = tls_verify_setting(cfg)
    if cfg.access_key and cfg.secret_key and not cfg.anonymous:
        kwargs["aws_access_key_id"] = cfg.access_key
        kwargs["aws_secret_access_key"] = cfg.secret_key
        kwargs["aws_session_token"] = cfg.session_token
    return kwargs


def _answers_like_s3(response_dict: Mapping[str, Any], **_: Any) -> None:
    """A web page (MinIO's console) answering a LIST is no S3. botocore takes the 200 for an
    error embedded in the body and has turned it into a 500 before this handler runs, so a
    500 HTML page counts too: S3 itself never answers a LIST in HTML."""
    kind = str(response_dict.get("headers", {}).get("content-type", ""))
    if response_dict.get("status_code") in (200, 500) and "html" in kind:
        raise not_s3(kind)


class Source:
    """An open S3 client for one bucket; use as `async with Source(cfg) as src`."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.bucket = cfg.bucket
        self._stack = AsyncExitStack()
        self._client: Any = None

    async def __aenter__(self) -> Source:
        session = get_session()
        try:
            creator = session.create_client("s3", **client_kwargs(self.cfg))
            self._client = await self._stack.enter_async_context(creator)
            self._client.meta.events.register_first(
                "before-parse.s3.ListObjectsV2", _answers_like_s3
            )
        except (BotoCoreError, ValueError) as exc:
            raise ConfigError(f"S3 client: {_short(exc)}") from exc
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    def _map(self, exc: BaseException, what: str) -> FetchError:
        return with_key_source(
            map_boto_error(exc, what, self.cfg.endpoint, self.cfg.tls_hint), self.cfg
        )

    async def list_prefix(self, prefix: str) -> list[RemoteObject]:
        """Every object under `prefix` (paginated); an empty listing is ObjectNotFound."""
        return nonempty([obj async for obj in self._iter_prefix(prefix)], self.bucket, prefix)

    async def _iter_prefix(self, prefix: str) -> AsyncIterator[RemoteObject]:
        where = f"s3://{self.bucket}/{prefix}"
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    size, etag = int(item["Size"]), str(item.get("ETag", ""))
                    obj = listed_object(str(item["Key"]), size, etag, prefix)
                    if obj is not None:
                        yield obj
        except (BotoCoreError, ClientError, OSError) as exc:
            raise self._map(exc, f"list {where}") from exc

    async def get_bytes(
        self, key: str, etag: str | None = None, version_id: str | None = None
    ) -> bytes:
        """A whole small object (the manifest) in memory."""
        extra = {"IfMatch": etag} if etag else {}
        if version_id:
            extra["VersionId"] = version_id
        try:
            resp = await self._client.get_object(Bucket=self.bucket, Key=key, **extra)
            async with resp["Body"] as body:
                data: bytes = await body.read()
                return data
        except (BotoCoreError, ClientError, OSError) as exc:
            raise self._map(exc, f"get s3://{self.bucket}/{key}") from exc

    async def presign_get(
        self, key: str, expires: int = 3600, version_id: str | None = None, checksums: bool = False
    ) -> str:
        params = {"Bucket": self.bucket, "Key": key}
        if version_id:
            params["VersionId"] = version_id
        if checksums:  # botocore signs it as the x-amz-checksum-mode header (CHECKSUM_MODE)
            params["ChecksumMode"] = "ENABLED"
        try:
            url: str = await self._client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=expires
            )
        except (BotoCoreError, ClientError) as exc:
            raise self._map(exc, f"presign s3://{self.bucket}/{key}") from exc
        return url

    async def _call(self, what: str, method: str, **params: Any) -> Any:
        try:
            return await getattr(self._client, method)(Bucket=self.bucket, **params)
        except (BotoCoreError, ClientError, OSError) as exc:
            raise self._map(exc, f"{what} s3://{self.bucket}/{params.get('Key', '')}") from exc

    async def head(self, key: str, *, checksums: bool = False) -> ObjectHead | None:
        """HEAD `key`, or None when there is no such object."""
        extra = {"ChecksumMode": "ENABLED"} if checksums else {}
        try:
            resp: Mapping[str, Any] = await self._call("head", "head_object", Key=key, **extra)
        except ObjectNotFound:
            return None
        found = {name: str(resp.get(name) or "") for name in CHECKSUM_NAMES.values()}
        kind = resp.get("ChecksumType")
        return ObjectHead(
            size=int(resp.get("ContentLength", 0)),
            etag=str(resp.get("ETag", "")),
            metadata={str(k).lower(): str(v) for k, v in resp.get("Metadata", {}).items()},
            checksums=full_object_checksums(
                found, None if kind is None else str(kind), str(resp.get("ETag", ""))
            ),
            version_id=str(resp["VersionId"]) if resp.get("VersionId") else None,
        )

    async def put(self, key: str, data: bytes, meta: Mapping[str, str]) -> Mapping[str, Any]:
        """The object's ETag and, in a versioned bucket, its VersionId."""
        resp: Mapping[str, Any] = await self._call(
            "put", "put_object", Key=key, Body=data, Metadata=dict(meta)
        )
        return resp

    async def create_multipart(self, key: str, meta: Mapping[str, str]) -> str:
        resp = await self._call("upload", "create_multipart_upload", Key=key, Metadata=dict(meta))
        return str(resp["UploadId"])

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        resp = await self._call(
            "upload", "upload_part", Key=key, UploadId=upload_id, PartNumber=number, Body=data
        )
        return str(resp["ETag"])

    async def complete_multipart(
        self, key: str, upload_id: str, etags: list[str]
    ) -> Mapping[str, Any]:
        parts = [{"PartNumber": i + 1, "ETag": etag} for i, etag in enumerate(etags)]
        resp: Mapping[str, Any] = await self._call(
            "upload",
            "complete_multipart_upload",
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
        )
        return resp

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        await self._call("abort upload", "abort_multipart_upload", Key=key, UploadId=upload_id)
