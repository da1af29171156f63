"""Kubeflow Model Registry over its REST API v1alpha3 (api/openapi/model-registry.yaml).

GET registered_model?name=                      the model (refused when ARCHIVED)
GET model_version?name=&parentResourceId=       a named version, or else
GET registered_models/{id}/versions             the newest LIVE one (their initializer
                                                takes the newest without looking at state)
GET model_versions/{id}/artifacts               its newest model-artifact's `uri`
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from fetcher.config import Config
from fetcher.errors import ConfigError, RegistryNotFound, RegistryRefused
from fetcher.source.registry.http import JsonClient
from fetcher.source.registry.mlflow import (
    TAG_MANIFEST_SHA256,
    TAG_MANIFEST_VERSION,
    TAG_ROOT_DIGEST,
)
from fetcher.source.registry.uri import Answer, RegistryRef

API = "/api/model_registry/v1alpha3"
_GONE = frozenset({"DELETED", "MARKED_FOR_DELETION", "ABANDONED"})
_NEWEST = {"orderBy": "CREATE_TIME", "sortOrder": "DESC", "pageSize": "100"}


def client(cfg: Config, ref: RegistryRef) -> JsonClient:
    reg = cfg.registry
    base = ref.host or reg.kubeflow_base_url
    if not base:
        raise ConfigError(
            "MODEL_REGISTRY_BASE_URL: not set (or name the host: model-registry://HOST:PORT/MODEL)"
        )
    if "://" not in base:
        base = f"{reg.kubeflow_scheme}://{base}"
    headers = {}
    if reg.kubeflow_token_file is not None:
        headers["Authorization"] = f"Bearer {_token(reg.kubeflow_token_file)}"
    timeout = cfg.connect_timeout + cfg.read_timeout
    tls = (cfg.tls_verify, cfg.ca_bundle)
    return JsonClient(base, "model registry", headers, timeout, tls, cfg.proxies)


def _token(path: Any) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError as exc:
        raise ConfigError(f"MODEL_REGISTRY_TOKEN_FILE {path}: {exc.strerror}") from exc


def resolve(cfg: Config, ref: RegistryRef) -> Answer:
    api = client(cfg, ref)
    model = api.get(f"{API}/registered_model", {"name": ref.name}, f"model {ref.name!r}")
    if model.get("state") == "ARCHIVED":
        raise RegistryRefused(f"{ref.uri}: model {ref.name!r} is ARCHIVED")
    version = _version(api, ref, str(model["id"]))
    artifact = _model_artifact(api, ref, version)
    props = _properties(version)
    return Answer(
        str(version.get("name")),
        str(artifact["uri"]),
        props.get(TAG_MANIFEST_SHA256),
        props.get(TAG_MANIFEST_VERSION),
        props.get(TAG_ROOT_DIGEST),
    )


def _version(api: JsonClient, ref: RegistryRef, model_id: str) -> Mapping[str, Any]:
    if ref.version is not None:
        query = {"name": ref.version, "parentResourceId": model_id}
        what = f"version {ref.version!r} of model {ref.name!r}"
        version: Mapping[str, Any] = api.get(f"{API}/model_version", query, what)
        if version.get("state") == "ARCHIVED":
            raise RegistryRefused(f"{ref.uri}: {what} is ARCHIVED")
        return version
    path = f"{API}/registered_models/{model_id}/versions"
    for version in _pages(api, path, {}, f"versions of {ref.name!r}"):
        if version.get("state", "LIVE") == "LIVE":
            return version
    raise RegistryNotFound(f"{ref.uri}: model {ref.name!r} has no LIVE version")


def _model_artifact(
    api: JsonClient, ref: RegistryRef, version: Mapping[str, Any]
) -> Mapping[str, Any]:
    path = f"{API}/model_versions/{version['id']}/artifacts"
    query = {"artifactType": "model-artifact"}
    for artifact in _pages(api, path, query, f"artifacts of version {version.get('name')!r}"):
        kind = artifact.get("artifactType", "model-artifact")
        if kind == "model-artifact" and artifact.get("uri") and artifact.get("state") not in _GONE:
            return artifact
    raise RegistryNotFound(f"{ref.uri}: version {version.get('name')!r} has no model artifact")


def _pages(
    api: JsonClient, path: str, query: Mapping[str, str], what: str
) -> Iterator[Mapping[str, Any]]:
    token = ""
    while True:
        page = api.get(
            path, {**query, **_NEWEST, **({"nextPageToken": token} if token else {})}, what
        )
        yield from (item for item in page.get("items") or [] if isinstance(item, dict))
        token = str(page.get("nextPageToken") or "")
        if not token or not page.get("items"):
            return


def _properties(entity: Mapping[str, Any]) -> dict[str, str]:
    """customProperties' string values ({"metadataType": ..., "string_value": ...})."""
    props = entity.get("customProperties") or {}
    return {
        str(k): str(v["string_value"])
        for k, v in props.items()
        if isinstance(v, dict) and "string_value" in v
    }
