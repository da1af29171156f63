"""moto's standalone S3 server: a second S3 dialect, on 127.0.0.1 on a free port, stopped by PID.

It answers a composite (multipart) checksum as `x-amz-checksum-crc32: <value>` with neither the
`-N` suffix nor `x-amz-checksum-type`, as older servers do: what issue 13 item 2 is about.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.seaweed import free_port

ACCESS_KEY, SECRET_KEY = "moto-access", "moto-secret-Hq2p"  # moto takes any keys


@dataclass(frozen=True)
class MotoServer:
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )


@contextmanager
def moto_server(log_dir: Path) -> Iterator[MotoServer]:
    port = free_port()
    binary = Path(sys.executable).parent / "moto_server"
    with open(log_dir / "moto.log", "wb") as out:
        proc = subprocess.Popen(
            [str(binary), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_ready(port, proc)
        yield MotoServer(port)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and nothing else
        proc.wait(timeout=10)


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1).close()
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise RuntimeError("moto_server did not start")
