"""Registry URIs and the settings to reach each registry; pure, so config.py can use them.

models:/<name>/<version>              MLflow, a version number
models:/<name>@<alias>                MLflow, an alias (re-resolved at every start)
model-registry://[host:port/]<model>[/<version>]
                                      Kubeflow Model Registry; no version: newest LIVE one
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Kind = Literal["mlflow", "kubeflow"]
MLFLOW_SCHEME, KUBEFLOW_SCHEME = "models:/", "model-registry://"
_NAME = re.compile(r"[^/@?#\s][^/?#]*")  # MLflow names may hold spaces and dots, never a slash
_HOST = re.compile(r"[A-Za-z0-9.-]+:\d{1,5}")


@dataclass(frozen=True, slots=True)
class RegistryRef:
    uri: str
    kind: Kind
    name: str
    version: str | None = None  # None with an alias, or Kubeflow's "newest LIVE version"
    alias: str | None = None
    host: str | None = None  # Kubeflow: host:port named in the URI, over MODEL_REGISTRY_BASE_URL


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    """How to reach the registries; secrets stay out of repr()."""

    mlflow_uri: str | None = None  # MLFLOW_TRACKING_URI, http(s)://host[:port][/path]
    mlflow_token: str | None = field(default=None, repr=False)
    mlflow_username: str | None = None
    mlflow_password: str | None = field(default=None, repr=False)
    mlflow_insecure_tls: bool = False
    mlflow_cert_path: str | None = None
    kubeflow_base_url: str | None = None  # MODEL_REGISTRY_BASE_URL: host:port (or a URL)
    kubeflow_scheme: str = "http"
    kubeflow_token_file: Path | None = None  # read at each resolution: tokens rotate


@dataclass(frozen=True, slots=True)
class Answer:
    """What a registry said about one version, before its location is checked."""

    version: str  # the registry's own version name or number
    location: str  # the artifact URI it gave
    manifest_sha256: str | None = None  # tags written by `publish --register`
    manifest_version: str | None = None
    root_digest: str | None = None


def is_registry_uri(text: str) -> bool:
    return text.strip().startswith((MLFLOW_SCHEME, KUBEFLOW_SCHEME))


def parse_registry_uri(text: str) -> RegistryRef:
    """The URI as a RegistryRef; ValueError with a phrase that follows "SRC_URI: "."""
    uri = text.strip()
    if uri.startswith(MLFLOW_SCHEME):
        return _mlflow(uri, uri[len(MLFLOW_SCHEME) :])
    return _kubeflow(uri, uri[len(KUBEFLOW_SCHEME) :])


def _mlflow(uri: str, rest: str) -> RegistryRef:
    name, at, alias = rest.partition("@")
    if at and "/" not in name and _NAME.fullmatch(name) and _NAME.fullmatch(alias):
        return RegistryRef(uri, "mlflow", name, alias=alias)
    name, slash, version = rest.partition("/")
    if slash and _NAME.fullmatch(name) and version.isdigit():
        return RegistryRef(uri, "mlflow", name, version=version)
    raise ValueError("expected models:/NAME/VERSION (a number) or models:/NAME@ALIAS")


def _kubeflow(uri: str, rest: str) -> RegistryRef:
    tokens = rest.split("/")
    host = None
    # Their initializer compares the first token with its configured host; a host:port is
    # unambiguous on its own (a model name has no port), so that decides here.
    if len(tokens) == 3 or (len(tokens) == 2 and _HOST.fullmatch(tokens[0])):
        host, tokens = tokens[0], tokens[1:]
        if not _HOST.fullmatch(host):
            raise ValueError("expected model-registry://[HOST:PORT/]MODEL[/VERSION]")
    if not tokens or len(tokens) > 2 or not all(_NAME.fullmatch(t) for t in tokens):
        raise ValueError("expected model-registry://[HOST:PORT/]MODEL[/VERSION]")
    version = tokens[1] if len(tokens) == 2 else None
    return RegistryRef(uri, "kubeflow", tokens[0], version=version, host=host)
