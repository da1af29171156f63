"""Shared fixtures: a real SeaweedFS on 127.0.0.1, a clean environment, and a fetcher runner."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devtools.seaweed import SeaweedServer, boto3_client, start_temporary
from fetcher.cache.layout import META_DIR
from tests.faults.proxy import FaultProxy

BUCKET = "llm-models"
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
    server = start_temporary()
    try:
        boto3_client(server).create_bucket(Bucket=BUCKET)
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


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


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.stderr.splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if name is None or doc.get("event") == name:
                out.append(doc)
        return out


def pod_env(
    server: SeaweedServer, prefix: str, dest: Path, endpoint: str | None = None
) -> dict[str, str]:
    return {
        "MINIO_ENDPOINT": endpoint or server.endpoint,
        "MINIO_BUCKET": BUCKET,
        "MODEL_PREFIX": prefix,
        "MODEL_CACHE_DIR": str(dest),
        "MINIO_ACCESS_KEY": server.access_key,
        "MINIO_SECRET_KEY": server.secret_key,
        "LOG_FORMAT": "json",
        "FETCH_TERMINATION_LOG": str(dest.parent / "termination-log"),
    }


def run_fetcher(
    args: list[str],
    env: Mapping[str, str],
    timeout: float = 120,
    rlimit: tuple[int, int] | None = None,
) -> Result:
    """`python -m fetcher ARGS`; `rlimit` is (resource.RLIMIT_..., limit) for the child only."""
    full_env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **env}

    def limit() -> None:
        if rlimit is not None:
            resource.setrlimit(rlimit[0], (rlimit[1], rlimit[1]))

    proc = subprocess.run(
        [sys.executable, "-m", "fetcher", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit if rlimit else None,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "model-cache"


@pytest.fixture
def fetch(s3_server: SeaweedServer, prefix: str, dest: Path) -> Callable[..., Result]:
    """Run `model-fetcher` with the pod environment; keyword args add or override variables."""

    def run(*args: str, endpoint: str | None = None, **env: str) -> Result:
        return run_fetcher(list(args), {**pod_env(s3_server, prefix, dest, endpoint), **env})

    return run


def tree(root: Path) -> dict[str, bytes]:
    """Every model file under root (the fetcher's own .fetcher/ left out)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and META_DIR not in p.relative_to(root).parts
    }


def metric(path: Path, name: str, **labels: str) -> float:
    """The sum of a metric's samples with these labels in a textfile; absent is an error."""
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in path.read_text().splitlines()
        if line.startswith((name + "{", name + " "))
        and all(f'{k}="{v}"' in line for k, v in labels.items())
    ]
    if not values:
        raise AssertionError(f"{name}{labels or ''} not in {path}")
    return sum(values)
