"""`model-registry://` URIs (Kubeflow Model Registry, REST API v1alpha3), resolved against a
STUB: the registry is a Go server backed by MySQL/PostgreSQL that cannot run here, so a small
HTTP server on 127.0.0.1 serves recorded answers in the shape of its OpenAPI
(`api/openapi/model-registry.yaml` in kubeflow/hub: RegisteredModel, ModelVersion,
ModelVersionList, ArtifactList, Error). The S3 side is the real SeaweedFS, and the bytes on
disk are what is checked."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from devtools.sample_model import write_sample_model
from devtools.seaweed import SeaweedServer
from tests.faults.tinyproxy import tinyproxy
from tests.helpers import BUCKET, Result, pod_env, run_fetcher, tree

API = "/api/model_registry/v1alpha3"
TOKEN = "kube-rbac-proxy-token"


@dataclass
class Stub:
    """Answers keyed by (path, sorted query items); everything else is the API's 404."""

    answers: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)
    port: int = 0

    def answer(self, path: str, query: dict[str, str], doc: Any) -> None:
        self.answers[(API + path, tuple(sorted(query.items())))] = doc


def _handler(stub: Stub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            stub.seen.append(self.path)
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self._send(401, {"code": "401", "message": "unauthorized"})
            # Paging and ordering parameters are the client's business, not the key.
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            for unkeyed in ("orderBy", "sortOrder", "pageSize", "nextPageToken"):
                query.pop(unkeyed, None)
            doc = stub.answers.get((url.path, tuple(sorted(query.items()))))
            if doc is None:
                return self._send(404, {"code": "404", "message": "no such entity"})
            return self._send(200, doc)

        def _send(self, status: int, doc: Any) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def stub() -> Iterator[Stub]:
    stub = Stub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(stub))
    stub.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _version(vid: str, name: str, state: str) -> dict[str, Any]:
    return {
        "id": vid, "name": name, "registeredModelId": "1", "state": state,
        "createTimeSinceEpoch": str(1700000000000 + int(vid)), "customProperties": {},
    }  # fmt: skip


def _listed(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"items": items, "size": len(items), "pageSize": 100, "nextPageToken": ""}


@pytest.fixture
def registry(
    stub: Stub, s3_server: SeaweedServer, tmp_path: Path
) -> tuple[Stub, str, dict[str, Path]]:
    """Model `llm` with v1 and v2 LIVE and a newer v3 ARCHIVED (its prefix is empty)."""
    root, model = f"kf-{uuid.uuid4().hex[:8]}", "llm"
    local = {}
    for seed, version in enumerate(("v1", "v2"), 20):
        local[version] = tmp_path / version
        write_sample_model(local[version], 256 << 10, shards=1, seed=seed)
        env = pod_env(s3_server, "", tmp_path / "unused")
        res = run_fetcher(["publish", str(local[version]), f"s3://{BUCKET}/{root}/{version}/"], env)
        assert res.code == 0, res.stderr
    stub.answer("/registered_model", {"name": model}, {"id": "1", "name": model, "state": "LIVE"})
    versions = {"v1": _version("2", "v1", "LIVE"), "v2": _version("3", "v2", "LIVE")}
    versions["v3"] = _version("4", "v3", "ARCHIVED")
    for name, doc in versions.items():
        stub.answer("/model_version", {"name": name, "parentResourceId": "1"}, doc)
        artifact = {
            "artifactType": "model-artifact", "id": str(10 + int(doc["id"])),
            "uri": f"s3://{BUCKET}/{root}/{name}/", "state": "LIVE", "modelFormatName": "vllm",
        }  # fmt: skip
        query = {"artifactType": "model-artifact"}
        stub.answer(f"/model_versions/{doc['id']}/artifacts", query, _listed([artifact]))
    newest_first = [versions["v3"], versions["v2"], versions["v1"]]
    stub.answer("/registered_models/1/versions", {}, _listed(newest_first))
    return stub, root, local


def kf_fetch(
    server: SeaweedServer,
    stub: Stub,
    uri: str,
    dest: Path,
    token_file: Path | None,
    base: bool,
    **extra: str,
) -> Result:
    env = {**pod_env(server, "", dest), **extra}
    env.pop("MINIO_BUCKET")
    env.pop("MODEL_PREFIX")
    if base:
        env["MODEL_REGISTRY_BASE_URL"] = f"127.0.0.1:{stub.port}"
    if token_file is not None:
        env["MODEL_REGISTRY_TOKEN_FILE"] = str(token_file)
    return run_fetcher([uri, str(dest)], env)


@pytest.fixture
def token(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


def test_no_version_means_the_newest_live_one_not_the_newest_archived(
    s3_server: SeaweedServer,
    registry: tuple[Stub, str, dict[str, Path]],
    token: Path,
    tmp_path: Path,
) -> None:
    stub, _, local = registry
    dest = tmp_path / "cache"
    res = kf_fetch(s3_server, stub, "model-registry://llm", dest, token, base=True)
    assert res.code == 0, res.stderr
    assert tree(dest) == tree(local["v2"])
    resolved = res.events("resolved")[0]
    assert resolved["version"] == "v2", resolved


def test_a_named_version_at_a_host_in_the_uri(
    s3_server: SeaweedServer,
    registry: tuple[Stub, str, dict[str, Path]],
    token: Path,
    tmp_path: Path,
) -> None:
    stub, root, local = registry
    dest = tmp_path / "cache"
    uri = f"model-registry://127.0.0.1:{stub.port}/llm/v1"
    res = kf_fetch(s3_server, stub, uri, dest, token, base=False)
    assert res.code == 0, res.stderr
    assert tree(dest) == tree(local["v1"])
    state = json.loads((dest / ".fetcher" / "state.json").read_text())
    assert state["source"]["chain"].startswith(f"{uri} -> version v1 -> s3://{BUCKET}/{root}/v1/")


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("model-registry://llm/v3", "ARCHIVED"),
        ("model-registry://llm/v9", "version 'v9'"),
        ("model-registry://nosuch", "model 'nosuch'"),
    ],
    ids=["archived", "unknown-version", "unknown-model"],
)
def test_an_archived_or_unknown_version_is_exit_3_and_fetches_nothing(
    s3_server: SeaweedServer,
    registry: tuple[Stub, str, dict[str, Path]],
    token: Path,
    tmp_path: Path,
    uri: str,
    says: str,
) -> None:
    stub, _, _ = registry
    dest = tmp_path / "cache"
    res = kf_fetch(s3_server, stub, uri, dest, token, base=True)
    assert res.code == 3, res.stderr
    assert says in res.stderr, res.stderr
    assert not tree(dest)


def test_without_the_bearer_token_the_registry_refuses_and_the_token_is_never_printed(
    s3_server: SeaweedServer,
    registry: tuple[Stub, str, dict[str, Path]],
    token: Path,
    tmp_path: Path,
) -> None:
    stub, _, _ = registry
    res = kf_fetch(s3_server, stub, "model-registry://llm", tmp_path / "c", None, base=True)
    assert res.code == 3 and "HTTP 401" in res.stderr, res.stderr
    ok = kf_fetch(s3_server, stub, "model-registry://llm", tmp_path / "c2", token, base=True)
    assert ok.code == 0, ok.stderr
    assert TOKEN not in ok.stderr + res.stderr


def test_registry_requests_follow_the_one_proxy_rule(
    s3_server: SeaweedServer,
    registry: tuple[Stub, str, dict[str, Path]],
    token: Path,
    tmp_path: Path,
) -> None:
    """The registry client routes like the S3 planes (proxy.py, curl's NO_PROXY): through the
    proxy when set, and direct for a NO_PROXY CIDR, which urllib's own rule does not read
    (before, the registry went through the proxy while S3 went direct)."""
    stub, _, local = registry
    (tmp_path / "tinyproxy").mkdir()
    with tinyproxy(tmp_path / "tinyproxy") as proxy:
        via = kf_fetch(
            s3_server, stub, "model-registry://llm", tmp_path / "a", token, True,
            HTTP_PROXY=proxy.url,
        )  # fmt: skip
        assert via.code == 0, via.stderr
        seen = proxy.requests()
        registry_url = f"GET http://127.0.0.1:{stub.port}/api/model_registry/"
        assert any(r.startswith(registry_url) for r in seen), seen
        before = len(seen)
        direct = kf_fetch(
            s3_server, stub, "model-registry://llm", tmp_path / "b", token, True,
            HTTP_PROXY=proxy.url, NO_PROXY="127.0.0.0/8",
        )  # fmt: skip
        assert direct.code == 0, direct.stderr
        assert proxy.requests()[before:] == []
    assert tree(tmp_path / "a") == tree(tmp_path / "b") == tree(local["v2"])
