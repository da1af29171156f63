"""https endpoints with a self-signed CA, as the MinIO operator creates them (issue 4)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.seaweed import SeaweedServer, boto3_client, start_temporary
from tests.helpers import BUCKET, make_certs, pod_env, run_fetcher, tree


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SeaweedServer, Path]]:
    ca, cert, key = make_certs(tmp_path_factory.mktemp("certs"))
    server = start_temporary(tls=(cert, key))
    try:
        client = boto3_client(server)
        client.create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
        client.put_object(Bucket=BUCKET, Key="secure/v1/config.json", Body=b"{}")  # type: ignore[attr-defined]
        client.put_object(Bucket=BUCKET, Key="secure/v1/w.bin", Body=b"w" * 300_000)  # type: ignore[attr-defined]
        yield server, ca
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


EXPECTED = {"config.json": b"{}", "w.bin": b"w" * 300_000}


def env_for(server: SeaweedServer, dest: Path, **extra: str) -> dict[str, str]:
    return {
        **pod_env(server, "secure/v1/", dest, server.https_endpoint),
        "FETCH_PART_SIZE": "128KiB",
        **extra,
    }


def test_https_with_the_ca_bundle(tls_server: tuple[SeaweedServer, Path], tmp_path: Path) -> None:
    server, ca = tls_server
    res = run_fetcher([], env_for(server, tmp_path / "c", MINIO_CA_BUNDLE=str(ca)))
    assert res.code == 0, res.stderr
    assert tree(tmp_path / "c") == EXPECTED
    assert not res.events("tls_unverified")


def test_https_without_the_ca_is_a_clear_tls_error(
    tls_server: tuple[SeaweedServer, Path], tmp_path: Path
) -> None:
    server, _ = tls_server
    res = run_fetcher([], env_for(server, tmp_path / "c", FETCH_CONNECT_TIMEOUT="2"))
    assert res.code == 3, res.stderr
    assert "TLS" in res.stderr or "certificate" in res.stderr
    assert "MINIO_CA_BUNDLE" in res.stderr  # says how to fix it
    assert "Traceback" not in res.stderr
    assert tree(tmp_path / "c") == {}


def test_https_with_verification_off_warns(
    tls_server: tuple[SeaweedServer, Path], tmp_path: Path
) -> None:
    server, _ = tls_server
    res = run_fetcher([], env_for(server, tmp_path / "c", MINIO_TLS_VERIFY="false"))
    assert res.code == 0, res.stderr
    assert tree(tmp_path / "c") == EXPECTED
    assert res.events("tls_unverified")


def test_kserve_aws_ca_bundle(tls_server: tuple[SeaweedServer, Path], tmp_path: Path) -> None:
    server, ca = tls_server
    env = {
        "AWS_ENDPOINT_URL": server.https_endpoint,
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
        "AWS_CA_BUNDLE": str(ca),
    }
    res = run_fetcher([f"s3://{BUCKET}/secure/v1/", str(tmp_path / "m")], env)
    assert res.code == 0, res.stderr
    assert tree(tmp_path / "m") == EXPECTED
