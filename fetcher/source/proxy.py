"""Which requests go through a forward proxy: one rule, curl's, for every client (issue 13).

A cluster-wide proxy (OpenShift injects HTTP_PROXY, HTTPS_PROXY and NO_PROXY into pods) must
route the LIST of the control plane and the ranged GETs of the byte path the same way; before,
urllib honoured the variables with Python's rules and the byte path ignored them.

curl's NO_PROXY, as implemented here:
  - a comma-separated list; `*` alone matches every host;
  - a name matches itself and every name below it: `cluster.local` and `.cluster.local` both
    match `minio.ns.svc.cluster.local` (and `cluster.local`); case does not matter;
  - an IP address matches that address, and `10.0.0.0/8` (or an IPv6 CIDR) every address in it,
    when the URL's host is an address literal (names are not resolved to decide);
  - loopback is proxied like any other host unless NO_PROXY names it (Go skips it by
    default; curl keeps an explicit setting in charge, which a test on 127.0.0.1 can check).
HTTP goes through the proxy in absolute form (`GET http://host/path`), HTTPS through CONNECT.
Only http:// proxies are supported; a proxy URL without a port uses curl's 1080.
"""

from __future__ import annotations

import base64
import ipaddress
import ssl
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

_DEFAULT_PORT = 1080  # curl's


@dataclass(frozen=True, slots=True)
class Proxy:
    host: str
    port: int
    authorization: str | None = field(default=None, repr=False)  # "Basic ...", never logged

    @property
    def netloc(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def to_url(self) -> str:
        """For clients that take a URL (aiohttp under aiobotocore); may carry the password."""
        if self.authorization is None:
            return f"http://{self.netloc}"
        user_pass = base64.b64decode(self.authorization.split()[1]).decode()
        user, _, password = user_pass.partition(":")
        return f"http://{quote(user, safe='')}:{quote(password, safe='')}@{self.netloc}"


@dataclass(frozen=True, slots=True)
class ProxyRules:
    http: Proxy | None = None
    https: Proxy | None = None
    no_proxy: tuple[str, ...] = ()

    def for_url(self, url: str) -> Proxy | None:
        """The proxy for a request to `url`, or None to connect directly."""
        parts = urlsplit(url)
        proxy = self.https if parts.scheme == "https" else self.http
        if proxy is None or bypassed(parts.hostname or "", self.no_proxy):
            return None
        return proxy


DIRECT = ProxyRules()  # no proxy variables set


def parse_proxy(text: str) -> Proxy:
    """An http proxy URL (`http://[user:password@]host[:port]`, the scheme optional)."""
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text.strip())
    if parts.scheme.lower() != "http":
        raise ValueError("expected an http:// proxy (https:// and socks proxies are not supported)")
    if not parts.hostname:
        raise ValueError("expected a proxy URL with a host")
    try:
        port = parts.port or _DEFAULT_PORT
    except ValueError:
        raise ValueError("expected a port 1..65535") from None
    auth = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(pair.encode()).decode()
    return Proxy(parts.hostname, port, auth)


def parse_no_proxy(text: str) -> tuple[str, ...]:
    entries = (e.strip().lower().lstrip(".").removesuffix(".") for e in text.split(","))
    return tuple(e for e in entries if e)


def bypassed(host: str, no_proxy: tuple[str, ...]) -> bool:
    """curl's NO_PROXY match of `host` (a name or an address literal, brackets removed)."""
    host = host.strip("[]").lower().removesuffix(".")
    address = _address(host)
    for entry in no_proxy:
        if entry == "*":
            return True
        if address is not None:
            if _address_in(address, entry):
                return True
        elif host == entry or host.endswith("." + entry):
            return True
    return False


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _address_in(address: ipaddress.IPv4Address | ipaddress.IPv6Address, entry: str) -> bool:
    try:
        return address in ipaddress.ip_network(entry.strip("[]"), strict=False)
    except ValueError:
        return False  # a name entry: never matches an address literal


def proxies_to_json(rules: ProxyRules) -> dict[str, object]:
    """For the worker processes' settings (they get no Config)."""

    def one(p: Proxy | None) -> list[object] | None:
        return None if p is None else [p.host, p.port, p.authorization]

    return {"http": one(rules.http), "https": one(rules.https), "no_proxy": list(rules.no_proxy)}


def proxies_from_json(doc: dict[str, Any]) -> ProxyRules:
    def one(v: list[Any] | None) -> Proxy | None:
        return None if v is None else Proxy(str(v[0]), int(v[1]), v[2])

    return ProxyRules(one(doc["http"]), one(doc["https"]), tuple(doc["no_proxy"]))


def urllib_opener(ctx: ssl.SSLContext | None) -> urllib.request.OpenerDirector:
    """An opener that never routes by itself: urllib would read the proxy variables from the
    environment with Python's NO_PROXY rules; `routed` applies this module's (curl's)."""
    tls: urllib.request.BaseHandler = (
        urllib.request.HTTPSHandler(context=ctx) if ctx else urllib.request.HTTPHandler()
    )
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), tls)


def routed(request: urllib.request.Request, proxy: Proxy | None) -> urllib.request.Request:
    """`request` sent through `proxy` when the rules name one: http in absolute form, https
    through a CONNECT tunnel (urllib's set_proxy). The Host stays the endpoint's (signed for
    it; urllib would name the proxy in a tunnelled Host)."""
    if proxy is not None:
        request.set_proxy(proxy.netloc, "http")
        request.add_unredirected_header("Host", urlsplit(request.full_url).netloc)
        if proxy.authorization:
            request.add_header("Proxy-Authorization", proxy.authorization)
    return request
