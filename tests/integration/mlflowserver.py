"""A real MLflow tracking server (PyPI `mlflow`, a test dependency only) on 127.0.0.1.

`mlflow server` with a SQLite backend store in a temporary directory, on a free port, stopped
by its PID (its process group: the server forks uvicorn/gunicorn workers). Its telemetry is
switched off, so the tests' traffic stays on loopback. Artifacts are never uploaded through
it: versions are registered with an `s3://` source on SeaweedFS, as `publish --register` does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devtools.seaweed import free_port

_START_TIMEOUT = 120.0  # the first start migrates the SQLite schema (~10 s here)
_QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def mlflow_binary() -> str:
    here = Path(sys.executable).parent / "mlflow"
    found = str(here) if here.exists() else shutil.which("mlflow")
    if not found:
        pytest.fail("the MLflow tests need `mlflow` (a dev dependency): run `make install`")
    return found


@dataclass
class MlflowServer:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def api(self, method: str, path: str, doc: dict[str, Any] | None = None) -> Any:
        """One REST call, for arranging test data (moving an alias, deleting a version)."""
        data = json.dumps(doc).encode() if doc is not None else None
        req = urllib.request.Request(
            f"{self.url}/api/2.0/mlflow/{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"{}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start(workdir: Path, artifact_root: str) -> MlflowServer:
    port = free_port()
    log = workdir / "mlflow.log"
    argv = [
        mlflow_binary(), "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
        "--default-artifact-root", artifact_root, "--no-serve-artifacts", "--workers", "1",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, env={**env, **_QUIET}, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=workdir,
        )  # fmt: skip
    server = MlflowServer(f"http://127.0.0.1:{port}", proc, log)
    try:
        _wait_healthy(server)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_healthy(server: MlflowServer) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {server.log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server not healthy in {_START_TIMEOUT:.0f}s: {server.log}")
