"""JSON over urllib for the registries, errors mapped into ours here, at the boundary.

Requests are routed like the S3 control plane's (sigv4.py), by proxy.py's rule (curl's
NO_PROXY), so every request of the process follows one proxy rule. Answers are bounded: a
registry answer is metadata, never megabytes.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from fetcher.errors import (
    AccessDenied,
    FetchError,
    RegistryNotFound,
    RegistryUnreachable,
    SourceError,
)
from fetcher.source.proxy import DIRECT, ProxyRules, routed, urllib_opener
from fetcher.tls import tls_context, tls_failure

_MAX_ANSWER = 8 << 20
_ATTEMPTS = 3  # like the control plane: a registry pod restarting answers 503 for a moment


class RegistryRejected(SourceError):
    """A 4xx other than 404 (MLflow answers an unknown alias with 400)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code  # the registry's error code, such as RESOURCE_ALREADY_EXISTS


class JsonClient:
    """GET and POST JSON documents under `base` (no trailing slash)."""

    def __init__(
        self,
        base: str,
        what: str,
        headers: Mapping[str, str],
        timeout: float,
        tls: tuple[bool, str | None] = (True, None),
        proxies: ProxyRules = DIRECT,
    ) -> None:
        self.base, self.what, self.headers, self.timeout = base.rstrip("/"), what, headers, timeout
        self.opener = urllib_opener(tls_context(*tls) if base.startswith("https") else None)
        self.proxy = proxies.for_url(self.base)

    def get(self, path: str, query: Mapping[str, str], what: str) -> Any:
        return self._send("GET", f"{self.base}{path}?{urlencode(query)}", None, what)

    def post(self, path: str, doc: Mapping[str, Any], what: str) -> Any:
        return self._send("POST", self.base + path, json.dumps(doc).encode(), what)

    def _send(self, method: str, url: str, body: bytes | None, what: str) -> Any:
        # A POST is sent once: repeating "create version" could register the model twice.
        for attempt in range(1, (_ATTEMPTS if method == "GET" else 1) + 1):
            try:
                return self._once(method, url, body, what)
            except RegistryUnreachable:
                if attempt == _ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def _once(self, method: str, url: str, body: bytes | None, what: str) -> Any:
        headers = {"Accept": "application/json", **self.headers}
        if body is not None:
            headers["Content-Type"] = "application/json"
        req = routed(
            urllib.request.Request(url, data=body, method=method, headers=headers), self.proxy
        )
        try:
            with self.opener.open(req, timeout=self.timeout) as resp:
                data = resp.read(_MAX_ANSWER + 1)
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc, what) from None
        except urllib.error.URLError as exc:
            raise self._unreachable(exc.reason) from None
        except OSError as exc:
            raise self._unreachable(exc) from None
        try:
            return json.loads(data)
        except ValueError:
            raise SourceError(f"{self.what} at {self.base}: {what}: not a JSON answer") from None

    def _unreachable(self, reason: object) -> FetchError:
        if isinstance(reason, ssl.SSLError):
            return tls_failure(reason, self.base)
        text = getattr(reason, "strerror", None) or str(reason)
        return RegistryUnreachable(f"cannot reach the {self.what} at {self.base}: {text}")

    def _http_error(self, exc: urllib.error.HTTPError, what: str) -> FetchError:
        body = exc.read(64 << 10) if exc.fp is not None else b""
        detail = error_detail(body)
        where = f"{self.what} at {self.base}"
        if exc.code == 404:
            return RegistryNotFound(f"{what}: not found in the {where}{detail}")
        if exc.code in (401, 403):
            return AccessDenied(f"{where} refused {what} (HTTP {exc.code}): check the token")
        if exc.code >= 500:
            return RegistryUnreachable(f"{where} failed {what} (HTTP {exc.code}){detail}")
        return RegistryRejected(f"{where}: {what}: HTTP {exc.code}{detail}", _code(body))


def _code(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return ""
    return str(doc.get("error_code") or doc.get("code") or "") if isinstance(doc, dict) else ""


def error_detail(body: bytes) -> str:
    """MLflow's {"error_code", "message"} or Kubeflow's {"code", "message"}, one line."""
    try:
        doc = json.loads(body)
    except ValueError:
        return ""
    if not isinstance(doc, dict):
        return ""
    code = doc.get("error_code") or doc.get("code")
    message = str(doc.get("message") or "").splitlines()[0][:200] if doc.get("message") else ""
    return f" ({code}: {message})" if code and message else (f" ({message})" if message else "")
