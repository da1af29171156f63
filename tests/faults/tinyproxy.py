"""A real forward proxy for tests: Debian's `tinyproxy-bin` (the binary without the system
service, which would listen on all interfaces), installed with apt when missing, started on
127.0.0.1 on a free port with a config file of its own, and stopped by its PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.promstack import _APT_ENV, _APT_LOCK_WAIT, _run_retrying, free_port

PACKAGE = "tinyproxy-bin"


def ensure_tinyproxy() -> str:
    found = shutil.which("tinyproxy") or shutil.which("tinyproxy", path="/usr/bin:/usr/sbin")
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip(f"proxy tests need {PACKAGE}: not installed, and no root apt-get here")
    env = {**os.environ, **_APT_ENV}
    for cmd in (
        ["apt-get", *_APT_LOCK_WAIT, "update", "-q"],
        ["apt-get", *_APT_LOCK_WAIT, "install", "-y", "-q", "--no-install-recommends", PACKAGE],
    ):
        if failure := _run_retrying(cmd, env):
            pytest.skip(f"could not install {PACKAGE}: `{' '.join(cmd)}` {failure}")
    found = shutil.which("tinyproxy") or shutil.which("tinyproxy", path="/usr/bin:/usr/sbin")
    if not found:
        pytest.skip(f"installed {PACKAGE} but found no tinyproxy binary")
    return found


@dataclass
class TinyProxy:
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def requests(self) -> list[str]:
        """The request lines tinyproxy logged ("GET http://...", "CONNECT host:port")."""
        return [
            line.split("Request (file descriptor", 1)[1].split("): ", 1)[1].strip()
            for line in self.log().splitlines()
            if "Request (file descriptor" in line
        ]


@contextmanager
def tinyproxy(workdir: Path) -> Iterator[TinyProxy]:
    binary = ensure_tinyproxy()
    port = free_port()
    log_path = workdir / "tinyproxy.log"
    conf = workdir / "tinyproxy.conf"
    # No Allow and no ConnectPort lines: every client (only loopback can reach it) and every
    # CONNECT port are allowed; Listen keeps it on 127.0.0.1.
    conf.write_text(
        f"Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 64\n"
        f'LogFile "{log_path}"\nLogLevel Info\nPidFile "{workdir / "tinyproxy.pid"}"\n'
    )
    with open(workdir / "tinyproxy.out", "wb") as out:
        proc = subprocess.Popen(
            [binary, "-d", "-c", str(conf)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_listening(port, proc)
        yield TinyProxy(port, log_path)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if proc.poll() is not None:
            raise RuntimeError(f"tinyproxy exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("tinyproxy did not start listening")
