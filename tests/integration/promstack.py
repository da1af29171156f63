"""A real Prometheus and Pushgateway (Debian packages) on 127.0.0.1 free ports, for tests.

`ensure_installed()` installs `prometheus` and `prometheus-pushgateway` with apt when they are
missing, so a fresh CI machine (root, registries reachable) runs these tests instead of skipping
them; it skips with the reason only where installing is impossible. Each server gets its own
ports, data directory and log file, never the packaged service's 9090/9091 or /var/lib.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PACKAGES = ("prometheus", "prometheus-pushgateway")
# promtool ships with prometheus; Debian names the gateway's binary prometheus-pushgateway.
_PUSHGATEWAY_NAMES = ("prometheus-pushgateway", "pushgateway")
_APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "NEEDRESTART_MODE": "a"}
# Another apt on the machine (a second test session, unattended-upgrades) holds the dpkg lock.
_APT_LOCK_WAIT = ("-o", "DPkg::Lock::Timeout=120")
# Per apt command; each is tried at most twice, and the tests' timeout allows for that.
STEP_TIMEOUT = 180


@dataclass(frozen=True)
class Binaries:
    prometheus: str
    promtool: str
    pushgateway: str


def find_binaries() -> Binaries | None:
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    pushgateway = next((p for n in _PUSHGATEWAY_NAMES if (p := shutil.which(n))), None)
    if prometheus and promtool and pushgateway:
        return Binaries(prometheus, promtool, pushgateway)
    return None


def ensure_installed() -> Binaries:
    """The three binaries, installed with apt if needed; pytest.skip only if that is impossible."""
    found = find_binaries()
    if found is not None:
        return found
    why = _cannot_install()
    if why:
        pytest.skip(f"Prometheus/Pushgateway tests need {' and '.join(PACKAGES)}: {why}")
    env = {**os.environ, **_APT_ENV}
    steps = [
        ["apt-get", *_APT_LOCK_WAIT, "update", "-q"],
        ["apt-get", *_APT_LOCK_WAIT, "install", "-y", "-q", "--no-install-recommends", *PACKAGES],
    ]
    for cmd in steps:
        failure = _run_retrying(cmd, env)
        if failure:
            pytest.skip(f"could not install {' '.join(PACKAGES)}: `{' '.join(cmd)}` {failure}")
    found = find_binaries()
    if found is None:
        pytest.skip(f"installed {' '.join(PACKAGES)} but prometheus/promtool/pushgateway not found")
    return found


def _cannot_install() -> str | None:
    if shutil.which("apt-get") is None:
        return "not installed, and this machine has no apt-get to install them"
    if os.geteuid() != 0:
        return "not installed, and installing them needs root (run as root, as CI does)"
    return None


def _run_retrying(cmd: list[str], env: dict[str, str]) -> str | None:
    """None on success, else what went wrong. `apt-get update` does not wait for the lists lock
    that another apt holds, so a failure is tried again once."""
    for attempt in range(2):
        try:
            proc = subprocess.run(
                cmd, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT
            )
        except subprocess.TimeoutExpired:
            return f"did not finish in {STEP_TIMEOUT}s (a slow or unreachable package mirror?)"
        if proc.returncode == 0:
            return None
        if attempt == 0:
            time.sleep(5)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
    return f"exited {proc.returncode}: {' | '.join(tail)}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A child process on 127.0.0.1:port, stopped by its PID; its log kept for failures."""

    def __init__(self, name: str, argv: list[str], port: int, workdir: Path) -> None:
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = workdir / f"{name}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout}s: {self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-8:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def get(self, path: str, **params: str) -> bytes:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=5) as resp:
            body: bytes = resp.read()
            return body


def start_prometheus(bins: Binaries, workdir: Path, target_port: int) -> Server:
    """Prometheus scraping 127.0.0.1:target_port every second (job `model-fetcher`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "model-fetcher",
                        "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
                    }
                ],
            }
        )
    )
    port = free_port()
    server = Server(
        "prometheus",
        [
            bins.prometheus,
            f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--config.file={config}",
            "--log.level=warn",
        ],
        port,
        workdir,
    )
    server.wait_ready()
    # The scrape manager applies new targets on a 5 s tick: wait for the first (failed) scrape,
    # so that a fetch started now is scraped from its first second.
    deadline = time.monotonic() + 30
    while not query(server, 'up{job="model-fetcher"}'):
        if time.monotonic() > deadline:
            raise RuntimeError(f"prometheus never scraped its target: {server.log_tail()}")
        time.sleep(0.2)
    return server


def start_pushgateway(bins: Binaries, workdir: Path) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = Server(
        "pushgateway",
        # Debian's build persists to /var/lib/prometheus/pushgateway.data by default: one
        # run's groups would come back in the next (issue 13). Empty: memory only.
        [
            bins.pushgateway,
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
            "--persistence.file=",
        ],
        port,
        workdir,
    )
    server.wait_ready()
    return server


def query(prometheus: Server, promql: str) -> list[dict[str, Any]]:
    """The instant vector for `promql` through the HTTP API: [{'metric': {...}, 'value': ...}]."""
    doc = json.loads(prometheus.get("/api/v1/query", query=promql))
    assert doc["status"] == "success", doc
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result
