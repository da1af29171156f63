"""MLflow Model Registry over its REST API 2.0, with plain HTTP (no `mlflow` package: it is
hundreds of megabytes, and three GETs is all a pod needs).

    models:/m@alias    GET registered-models/alias?name=&alias=
    models:/m/7        GET model-versions/get?name=&version=
    then the version's `source`; when it is not s3:// (runs:/, models:/m-...), ask
    GET model-versions/get-download-uri for the artifact location.

`register` is the pipeline's step for `publish --register NAME [--alias ALIAS]`.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from fetcher.config import Config
from fetcher.errors import ConfigError, RegistryNotFound, RegistryRefused
from fetcher.source.registry.http import JsonClient, RegistryRejected
from fetcher.source.registry.uri import Answer, RegistryRef

API = "/api/2.0/mlflow"
# The tags `publish --register` writes and `fetch` checks.
TAG_MANIFEST_SHA256, TAG_MANIFEST_VERSION, TAG_ROOT_DIGEST = (
    "manifest_sha256",
    "manifest_version",
    "root_digest",
)


def client(cfg: Config) -> JsonClient:
    reg = cfg.registry
    if not reg.mlflow_uri:
        raise ConfigError("MLFLOW_TRACKING_URI: not set (needed for models:/ URIs and --register)")
    headers: dict[str, str] = {}
    if reg.mlflow_token:
        headers["Authorization"] = f"Bearer {reg.mlflow_token}"
    elif reg.mlflow_username and reg.mlflow_password:
        pair = f"{reg.mlflow_username}:{reg.mlflow_password}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    tls = (not reg.mlflow_insecure_tls, reg.mlflow_cert_path)
    timeout = cfg.connect_timeout + cfg.read_timeout
    return JsonClient(reg.mlflow_uri, "MLflow registry", headers, timeout, tls, cfg.proxies)


def resolve(cfg: Config, ref: RegistryRef) -> Answer:
    api = client(cfg)
    mv = _model_version(api, ref)
    _refuse_unservable(ref, mv)
    version = str(mv.get("version", ""))
    location = str(mv.get("source") or "")
    if not location.startswith("s3://"):
        query = {"name": ref.name, "version": version}
        answer = api.get(f"{API}/model-versions/get-download-uri", query, "get-download-uri")
        location = str(answer.get("artifact_uri") or location)
    if location.startswith("runs:/"):
        location = _run_artifacts(api, location)
    tags = _tags(mv)
    return Answer(
        version,
        location,
        tags.get(TAG_MANIFEST_SHA256),
        tags.get(TAG_MANIFEST_VERSION),
        tags.get(TAG_ROOT_DIGEST),
    )


def _model_version(api: JsonClient, ref: RegistryRef) -> Mapping[str, Any]:
    if ref.alias is not None:
        path, query = "/registered-models/alias", {"name": ref.name, "alias": ref.alias}
        what = f"alias {ref.alias!r} of model {ref.name!r}"
    else:
        path, query = "/model-versions/get", {"name": ref.name, "version": str(ref.version)}
        what = f"version {ref.version} of model {ref.name!r}"
    try:
        answer = api.get(API + path, query, f"get {what}")
    except (RegistryNotFound, RegistryRejected):
        # MLflow says 400 for an unknown alias and 404 for a deleted version: ask about the
        # model itself, so the one line names what is missing.
        api.get(f"{API}/registered-models/get", {"name": ref.name}, f"model {ref.name!r}")
        raise RegistryNotFound(f"{ref.uri}: the MLflow registry has no {what}") from None
    mv = answer.get("model_version") if isinstance(answer, dict) else None
    if not isinstance(mv, dict):
        raise RegistryNotFound(f"{ref.uri}: the MLflow registry answered without a version")
    return mv


def _run_artifacts(api: JsonClient, location: str) -> str:
    """runs:/<run id>/<path> as the run's artifact location (the server gives it back as is
    when the version was registered over REST, without a storage location)."""
    run_id, _, path = location[len("runs:/") :].partition("/")
    answer = api.get(f"{API}/runs/get", {"run_id": run_id}, f"run {run_id}")
    root = str(answer.get("run", {}).get("info", {}).get("artifact_uri") or "")
    if not root:
        raise RegistryNotFound(f"{location}: the MLflow run has no artifact location")
    return root.rstrip("/") + "/" + path.strip("/") + "/"


def _refuse_unservable(ref: RegistryRef, mv: Mapping[str, Any]) -> None:
    status = str(mv.get("status") or "READY")
    stage = str(mv.get("current_stage") or "")
    if stage.lower().startswith("deleted"):
        raise RegistryRefused(f"{ref.uri}: version {mv.get('version')} is deleted")
    if status != "READY":
        raise RegistryRefused(
            f"{ref.uri}: version {mv.get('version')} is {status}, not READY: refusing to serve it"
        )


def _tags(mv: Mapping[str, Any]) -> dict[str, str]:
    tags = mv.get("tags") or []
    return {
        str(t["key"]): str(t.get("value", "")) for t in tags if isinstance(t, dict) and "key" in t
    }


def register(
    cfg: Config, name: str, source: str, tags: Mapping[str, str], alias: str | None
) -> str:
    """A new version of `name` (created if needed) at `source`, optionally aliased: its number."""
    api = client(cfg)
    try:
        api.post(f"{API}/registered-models/create", {"name": name}, f"create model {name!r}")
    except RegistryRejected as exc:
        if exc.code != "RESOURCE_ALREADY_EXISTS":
            raise
    doc = {
        "name": name,
        "source": source,
        "tags": [{"key": k, "value": v} for k, v in tags.items()],
    }
    answer = api.post(f"{API}/model-versions/create", doc, f"create a version of {name!r}")
    version = str(answer["model_version"]["version"])
    if alias:
        body = {"name": name, "alias": alias, "version": version}
        api.post(f"{API}/registered-models/alias", body, f"set alias {alias!r}")
    return version
