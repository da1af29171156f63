"""Helpers shared by the test modules: run the fetcher, read its results, arrange fixtures.

Fixtures stay in conftest.py; everything a test module imports by name lives here, so no test
module imports another.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from devtools.seaweed import SeaweedServer, boto3_client, start_temporary
from fetcher.cache.layout import META_DIR, Layout

BUCKET = "llm-models"


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
    cwd: Path | None = None,
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
        cwd=cwd,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


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


def popen_fetcher(env: dict[str, str]) -> subprocess.Popen[str]:
    full = {"PATH": os.environ["PATH"], **env}
    return subprocess.Popen(
        [sys.executable, "-m", "fetcher"],
        env=full,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for_parts(dest: Path, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for journal in Layout(dest).partial_dir.glob("*.json"):
            try:
                if len(json.loads(journal.read_text())["done"]) >= n:
                    return
            except (OSError, ValueError, KeyError):
                pass
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} parts done after {timeout}s")


def mount_tmpfs(where: Path, options: str) -> None:
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")


def make_certs(where: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")

    def sh(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=where, check=True, capture_output=True)

    sh(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=model-fetcher test CA",
    )
    sh(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=127.0.0.1",
    )
    (where / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "extendedKeyUsage=serverAuth\n"
    )
    sh(
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    )
    return where / "ca.pem", where / "srv.pem", where / "srv.key"


def make_key(where: Path, name: str = "signer") -> tuple[Path, Path]:
    """(private.pem, public.pem) of a fresh P-256 key."""
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = where / f"{name}.key.pem", where / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def chain_env(server: SeaweedServer, tmp_path: Path) -> dict[str, str]:
    """No keys in the environment: the aiobotocore control plane, signing from a shared
    credentials file (in a pod: IRSA / web identity)."""
    creds = tmp_path / "credentials"
    creds.write_text(
        f"[default]\naws_access_key_id = {server.access_key}\n"
        f"aws_secret_access_key = {server.secret_key}\n"
    )
    return {
        "MINIO_ACCESS_KEY": "",
        "MINIO_SECRET_KEY": "",
        "AWS_SHARED_CREDENTIALS_FILE": str(creds),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
    }


# What the `tls_seaweed` fixture holds.
TLS_PREFIX = "secure/v1/"
TLS_FILES = {"config.json": b"{}", "w.bin": b"w" * 300_000}


@contextlib.contextmanager
def seaweed_with_bucket(tls: tuple[Path, Path] | None = None) -> Iterator[SeaweedServer]:
    """A SeaweedFS of its own on 127.0.0.1 with the test bucket; stopped and removed after."""
    server = start_temporary(tls=tls)
    try:
        boto3_client(server).create_bucket(Bucket=BUCKET)
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


# A kill -9 right after one step of the cache: the crash tests (test_local_cache, test_small_files).
CRASH_AFTER = """
import os, sys
from fetcher.cache import partial, store
step, when, calls = sys.argv[1], sys.argv[2], {"n": 0}
sys.argv[1:] = []  # the rest of the command line is the fetcher's
owner = partial.Partial if step == "mark_done" else store.Cache
real = getattr(owner, step)

def crashing(self, *args):
    result = real(self, *args)
    calls["n"] += 1
    if when == str(calls["n"]) or when in map(str, args):
        os._exit(9)  # a kill -9 right after this step, before anything else is recorded
    return result

setattr(owner, step, crashing)
from fetcher.cli import main
main()
"""


def crash_after(env: dict[str, str], step: str, when: str) -> int:
    full = {"PATH": os.environ["PATH"], **env}
    cmd = [sys.executable, "-c", CRASH_AFTER, step, when]
    return subprocess.run(cmd, env=full, capture_output=True, timeout=120).returncode
