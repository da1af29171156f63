"""Endpoints that are not S3, or not the S3 they seem (issue 13, item 14): each one line that
names the fix, against real SeaweedFS listeners (its TLS and plain ports)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from devtools.seaweed import SeaweedServer
from tests.helpers import TLS_PREFIX, chain_env, pod_env, run_fetcher, tree


class _Console(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><html><title>MinIO Console</title></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def console() -> Iterator[str]:
    """A stub for MinIO's web console (port 9001), which cannot run here: 200 text/html to
    everything, on 127.0.0.1, in a thread of the test process, shut down after the test."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Console)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def last_line(dest: Path) -> str:
    return (dest.parent / "termination-log").read_text()


@pytest.mark.parametrize("plane", ["keys", "chain"])
def test_a_web_console_is_not_read_as_an_empty_listing(
    plane: str, console: str, s3_server: SeaweedServer, tmp_path: Path
) -> None:
    dest = tmp_path / "cache"
    env = pod_env(s3_server, "m/v1/", dest, console)
    env |= chain_env(s3_server, tmp_path) if plane == "chain" else {}
    res = run_fetcher([], env)
    assert res.code == 3, res.stderr
    line = last_line(dest)
    assert "the endpoint did not answer like S3 (Content-Type text/html" in line
    assert "is this the API port (9000)" in line and "nothing under" not in line


def test_http_to_a_tls_port_says_use_https(
    tls_seaweed: tuple[SeaweedServer, Path],
    tmp_path: Path,
) -> None:
    server, _ = tls_seaweed
    dest = tmp_path / "cache"
    plain = f"http://127.0.0.1:{server.ports['s3.port.https']}"
    res = run_fetcher([], pod_env(server, TLS_PREFIX, dest, plain))
    assert res.code == 3, res.stderr
    assert "the endpoint speaks TLS: use https://" in last_line(dest)
    assert tree(dest) == {}


@pytest.mark.parametrize("scheme", ["https://", ""])
def test_https_to_a_plain_port_says_use_http(
    scheme: str, s3_server: SeaweedServer, tmp_path: Path
) -> None:
    """ "" is a bare host:port, which means https: said in the same message."""
    dest = tmp_path / "cache"
    endpoint = f"{scheme}127.0.0.1:{s3_server.ports['s3.port']}"
    env = pod_env(s3_server, "m/v1/", dest)
    del env["MINIO_ENDPOINT"]
    res = run_fetcher([], {**env, "S3_ENDPOINT": endpoint})
    assert res.code == 3, res.stderr
    line = last_line(dest)
    assert "answered without TLS: use http://" in line
    assert "a host:port without a scheme means https unless S3_USE_HTTPS=0" in line


def test_an_endpoint_with_a_path_is_a_configuration_error(
    s3_server: SeaweedServer, tmp_path: Path
) -> None:
    dest = tmp_path / "cache"
    res = run_fetcher([], pod_env(s3_server, "m/v1/", dest, s3_server.endpoint + "/minio"))
    assert res.code == 2, res.stderr
    assert "MINIO_ENDPOINT: expected an endpoint without a path" in last_line(dest)
