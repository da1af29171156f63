"""Shared fixtures: a real SeaweedFS on 127.0.0.1, a clean environment, and a fetcher runner."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.seaweed import SeaweedServer, boto3_client
from tests.faults.proxy import FaultProxy
from tests.helpers import (
    BUCKET,
    TLS_FILES,
    TLS_PREFIX,
    Result,
    make_certs,
    pod_env,
    run_fetcher,
    seaweed_with_bucket,
)

_SCRUB = (
    "AWS_",
    "MINIO_",
    "FETCH_",
    "S3_",
    "MODEL_",
    "METRICS_",
    "PUSHGATEWAY",
    "STORAGE_",
    "LOG_",
    "POD_NAME",
    "awsAnonymousCredential",
)


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine sets AWS_CA_BUNDLE globally; every test starts from a clean environment."""
    for name in list(os.environ):
        if name.startswith(_SCRUB):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[SeaweedServer]:
    with seaweed_with_bucket() as server:
        yield server


@pytest.fixture(scope="session")
def s3(s3_server: SeaweedServer) -> Any:
    return boto3_client(s3_server)


@pytest.fixture
def prefix() -> str:
    """A fresh model prefix per test, so tests share one server without seeing each other."""
    return f"t-{uuid.uuid4().hex[:10]}/v1/"


@pytest.fixture
def put(s3: Any, prefix: str) -> Callable[[str, bytes], None]:
    def put_object(rel: str, data: bytes) -> None:
        s3.put_object(Bucket=BUCKET, Key=prefix + rel, Body=data)

    return put_object


@pytest.fixture
def proxy(s3_server: SeaweedServer) -> Iterator[FaultProxy]:
    """A fault-injecting, request-counting proxy in front of the server (stopped by the test)."""
    with FaultProxy("127.0.0.1", s3_server.ports["s3.port"]) as p:
        yield p


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "model-cache"


@pytest.fixture
def fetch(s3_server: SeaweedServer, prefix: str, dest: Path) -> Callable[..., Result]:
    """Run `model-fetcher` with the pod environment; keyword args add or override variables."""

    def run(*args: str, endpoint: str | None = None, **env: str) -> Result:
        return run_fetcher(list(args), {**pod_env(s3_server, prefix, dest, endpoint), **env})

    return run


# Issue 13's TLS tests (endpoints, forward proxy): a TLS SeaweedFS of their own, per module.
@pytest.fixture(scope="module")
def tls_seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SeaweedServer, Path]]:
    """A SeaweedFS with an https S3 port (a throwaway CA) holding TLS_FILES; (server, CA)."""
    ca, cert, key = make_certs(tmp_path_factory.mktemp("certs"))
    with seaweed_with_bucket(tls=(cert, key)) as server:
        client: Any = boto3_client(server)
        for rel, data in TLS_FILES.items():
            client.put_object(Bucket=BUCKET, Key=TLS_PREFIX + rel, Body=data)
        yield server, ca
