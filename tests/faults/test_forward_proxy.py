"""HTTP_PROXY / HTTPS_PROXY / NO_PROXY through a real forward proxy, tinyproxy on 127.0.0.1
(issue 13, item 4): the control plane and the byte path take the same route, curl's rule."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devtools.seaweed import SeaweedServer
from tests.faults.tinyproxy import TinyProxy, tinyproxy
from tests.helpers import TLS_FILES, TLS_PREFIX, Result, chain_env, pod_env, run_fetcher, tree

PART = 64 * 1024


@pytest.fixture(scope="module")
def forward_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyProxy]:
    with tinyproxy(tmp_path_factory.mktemp("tinyproxy")) as proxy:
        yield proxy


def _new_requests(proxy: TinyProxy, before: int) -> list[str]:
    return proxy.requests()[before:]


@pytest.mark.parametrize("plane", ["keys", "chain", "workers"])
def test_http_goes_through_the_proxy_in_absolute_form(
    plane: str,
    forward_proxy: TinyProxy,
    s3_server: SeaweedServer,
    put: Callable[[str, bytes], None],
    fetch: Callable[..., Result],
    dest: Path,
    tmp_path: Path,
) -> None:
    files = {"config.json": b"{}", "weights.bin": os.urandom(3 * PART)}
    for rel, data in files.items():
        put(rel, data)
    before = len(forward_proxy.requests())
    env = chain_env(s3_server, tmp_path) if plane == "chain" else {}
    env |= {"FETCH_WORKERS": "2"} if plane == "workers" else {}  # worker processes too
    res = fetch(HTTP_PROXY=forward_proxy.url, FETCH_PART_SIZE=str(PART), **env)
    assert res.code == 0, res.stderr
    assert tree(dest) == files
    seen = _new_requests(forward_proxy, before)
    origin = f"http://127.0.0.1:{s3_server.ports['s3.port']}/"
    assert any(r.startswith(f"GET {origin}llm-models?") for r in seen), seen  # the LIST
    ranged = [r for r in seen if "weights.bin" in r]
    assert len(ranged) >= 3, seen  # every part, by the byte path


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "127.0.0.0/8", "*", "localhost,127.0.0.1"])
def test_no_proxy_naming_the_endpoint_goes_direct(
    no_proxy: str,
    forward_proxy: TinyProxy,
    put: Callable[[str, bytes], None],
    fetch: Callable[..., Result],
    dest: Path,
) -> None:
    put("weights.bin", os.urandom(2 * PART))
    before = len(forward_proxy.requests())
    res = fetch(HTTP_PROXY=forward_proxy.url, NO_PROXY=no_proxy, FETCH_PART_SIZE=str(PART))
    assert res.code == 0, res.stderr
    assert _new_requests(forward_proxy, before) == []


def test_https_goes_through_a_connect_tunnel(
    forward_proxy: TinyProxy,
    tls_seaweed: tuple[SeaweedServer, Path],
    tmp_path: Path,
) -> None:
    server, ca = tls_seaweed
    before = len(forward_proxy.requests())
    env = pod_env(server, TLS_PREFIX, tmp_path / "c", server.https_endpoint)
    env |= {"MINIO_CA_BUNDLE": str(ca), "FETCH_PART_SIZE": "128KiB"}
    # http_proxy is for http:// only: an https endpoint takes HTTPS_PROXY.
    res = run_fetcher(
        [], {**env, "https_proxy": forward_proxy.url, "http_proxy": "http://127.0.0.1:9"}
    )
    assert res.code == 0, res.stderr
    assert tree(tmp_path / "c") == TLS_FILES
    seen = _new_requests(forward_proxy, before)
    tunnels = [
        r for r in seen if r.startswith(f"CONNECT 127.0.0.1:{server.ports['s3.port.https']}")
    ]
    assert len(tunnels) >= 2, seen  # the control plane's and the byte path's
    assert not [r for r in seen if r.startswith("GET ")]  # nothing in clear text


def test_a_proxy_that_cannot_be_reached_is_named(
    s3_server: SeaweedServer, put: Callable[[str, bytes], None], prefix: str, tmp_path: Path
) -> None:
    put("weights.bin", b"w")
    dest = tmp_path / "cache"
    env = pod_env(s3_server, prefix, dest)
    closed = "http://127.0.0.1:9"  # discard port, nothing listens: refused at once
    res = run_fetcher([], {**env, "HTTP_PROXY": closed, "FETCH_OUTAGE_TOLERANCE": "1s"})
    assert res.code == 3, res.stderr
    assert tree(dest) == {}
