"""fetcher.source.proxy: curl's NO_PROXY rules, and the proxy variables in the Config."""

from __future__ import annotations

import pytest

from fetcher.config import load
from fetcher.errors import ConfigError
from fetcher.source.proxy import Proxy, ProxyRules, bypassed, parse_no_proxy, parse_proxy

ENV = {"MINIO_BUCKET": "llm-models", "MODEL_PREFIX": "m/v1/", "MODEL_CACHE_DIR": "/c"}


@pytest.mark.parametrize(
    ("host", "no_proxy", "direct"),
    [
        ("minio.ns.svc.cluster.local", ".cluster.local", True),
        ("minio.ns.svc.cluster.local", "cluster.local", True),
        ("cluster.local", ".cluster.local", True),
        ("minio.ns.svc", ".svc", True),
        ("MinIO.NS.svc.", "svc", True),
        ("notcluster.local", "cluster.local", False),
        ("minio.example.com", "example.org, .cluster.local", False),
        ("10.1.2.3", "10.0.0.0/8", True),
        ("10.1.2.3", "10.1.2.3", True),
        ("11.1.2.3", "10.0.0.0/8", False),
        ("fd00::5", "fd00::/8", True),
        ("[::1]", "::1", True),
        ("127.0.0.1", "", False),  # loopback is proxied unless named (curl, not Go)
        ("localhost", "", False),
        ("127.0.0.1", "localhost", False),  # names are not resolved to decide
        ("anything", "*", True),
        ("10.0.0.1", "*", True),
        ("10.0.0.1", "example.com,*x", False),
    ],
)
def test_no_proxy(host: str, no_proxy: str, direct: bool) -> None:
    assert bypassed(host, parse_no_proxy(no_proxy)) is direct


def test_the_scheme_picks_the_proxy() -> None:
    rules = ProxyRules(Proxy("p1", 3128), Proxy("p2", 8080), ("svc",))
    assert rules.for_url("http://minio.ns.svc:9000/b") is None
    assert rules.for_url("http://minio:9000/b") == Proxy("p1", 3128)
    assert rules.for_url("https://minio:9000/b") == Proxy("p2", 8080)
    assert ProxyRules(http=Proxy("p1", 3128)).for_url("https://minio/") is None


def test_proxy_urls() -> None:
    assert parse_proxy("proxy.corp:3128") == Proxy("proxy.corp", 3128)
    assert parse_proxy("http://proxy.corp").port == 1080  # curl's default
    with_auth = parse_proxy("http://us%40er:p%3Ass@proxy:3128")
    assert with_auth.authorization == "Basic dXNAZXI6cDpzcw=="  # base64("us@er:p:ss")
    assert "p:ss" not in repr(with_auth)
    assert with_auth.to_url() == "http://us%40er:p%3Ass@proxy:3128"


def test_proxy_variables_in_the_config() -> None:
    env = {**ENV, "HTTPS_PROXY": "http://u:hunter2@proxy:3128", "no_proxy": ".svc,10.0.0.0/8"}
    cfg = load([], {**env, "http_proxy": "http://lower:1", "HTTP_PROXY": "http://upper:2"})
    assert cfg.proxies.http == Proxy("lower", 1)  # curl reads the lower-case name first
    assert cfg.proxies.https is not None and cfg.proxies.https.host == "proxy"
    assert cfg.proxies.no_proxy == ("svc", "10.0.0.0/8")
    assert "hunter2" not in repr(cfg)
    with pytest.raises(ConfigError) as caught:
        load([], {**ENV, "HTTPS_PROXY": "socks5://u:hunter2@proxy:1080"})
    assert caught.value.problems[0].startswith("HTTPS_PROXY: expected an http:// proxy")
    assert "hunter2" not in str(caught.value)
