"""Prometheus metrics on an injected CollectorRegistry; exposed over HTTP, pushed, or written.

Names are a contract (issue 5). Labels carry only the bucket and the model prefix: never a
credential, never a per-file label (cardinality stays constant whatever the model).

A run that exports nothing (no METRICS_PORT, Pushgateway or textfile) has no registry: its
values go nowhere, and prometheus_client is not imported at all. Its package import pulls
http.server and wsgiref for its exposition helpers, ~25-30 ms of a 1-file fetch's ~120 ms of
imports (python -X importtime, issue 14), on every pod start that does not need it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

from fetcher.errors import ConfigError
from fetcher.observe import log

_LABELS = ("bucket", "prefix")
INFO_LABELS = ("source", "version", "digest", "signer")
_RESULTS = ("downloaded", "cached", "removed", "failed")
# Ranged GETs of 32 MiB parts take 20 ms on loopback to minutes on a congested link.
_DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Value(Protocol):
    """What the fetch does to a metric (a prometheus_client child, or _Null)."""

    def inc(self, amount: float = 1) -> None: ...
    def set(self, value: float) -> None: ...
    def observe(self, amount: float) -> None: ...
    def labels(self, **labels: str) -> Value: ...
    def clear(self) -> None: ...


class _Null:
    """A metric of a run that exports none: every update is dropped."""

    def inc(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass

    def labels(self, **labels: str) -> _Null:
        return self

    def clear(self) -> None:
        pass


def new_registry() -> CollectorRegistry:
    """A registry for a run that exports its metrics (prometheus_client imported here)."""
    from prometheus_client import CollectorRegistry

    return CollectorRegistry()


def _metric(
    registry: CollectorRegistry | None,
    kind: str,
    name: str,
    doc: str,
    labels: tuple[str, ...],
    **kw: Any,
) -> Value:
    """A prometheus_client `kind` (Counter, Gauge, Histogram) on `registry`, or _Null."""
    if registry is None:
        return _Null()
    import prometheus_client

    made: Value = getattr(prometheus_client, kind)(name, doc, labels, registry=registry, **kw)
    return made


class Metrics:
    def __init__(self, registry: CollectorRegistry | None, bucket: str, prefix: str) -> None:
        self.registry = registry
        lv = {"bucket": bucket, "prefix": prefix}

        def new(kind: str, name: str, doc: str, labels: tuple[str, ...], **kw: Any) -> Value:
            return _metric(registry, kind, name, doc, labels, **kw)

        def counter(name: str, doc: str) -> Value:
            return new("Counter", name, doc, _LABELS).labels(**lv)

        def gauge(name: str, doc: str) -> Value:
            return new("Gauge", name, doc, _LABELS).labels(**lv)

        self.bytes_downloaded = counter(
            "model_fetcher_bytes_downloaded", "Bytes of model data received from S3."
        )
        self.bytes_expected = gauge("model_fetcher_bytes_expected", "Size of the model in bytes.")
        self.bytes_cached = gauge(
            "model_fetcher_bytes_cached", "Bytes kept from the cache without downloading."
        )
        self._files = new(
            "Counter", "model_fetcher_files", "Files by outcome.", (*_LABELS, "result")
        )
        self.files = {r: self._files.labels(**lv, result=r) for r in _RESULTS}
        self.request_duration = new(
            "Histogram",
            "model_fetcher_request_duration_seconds",
            "Duration of ranged GET requests.",
            _LABELS,
            buckets=_DURATION_BUCKETS,
        ).labels(**lv)
        self.inflight = gauge("model_fetcher_inflight_requests", "Ranged GETs in flight.")
        self._retries = new(
            "Counter",
            "model_fetcher_retries",
            "Retried requests by reason.",
            (*_LABELS, "reason"),
        )
        self._lv = lv
        self.checksum_failures = counter(
            "model_fetcher_checksum_failures", "Parts or files whose checksum did not match."
        )
        self.fetch_duration = gauge(
            "model_fetcher_fetch_duration_seconds", "Wall time of the last fetch."
        )
        self.last_success = gauge(
            "model_fetcher_last_success_timestamp_seconds",
            "Unix time of the last successful fetch.",
        )
        self.up = gauge("model_fetcher_up", "1 once the model is complete and verified.")
        self.source_unreachable = gauge(
            "model_fetcher_source_unreachable",
            "1 when the cache was served because S3 could not be reached.",
        )
        self.source_up = gauge(
            "model_fetcher_source_up",
            "0 while the source is unreachable during a fetch (FETCH_OUTAGE_TOLERANCE), else 1.",
        )
        self.source_up.set(1)
        self.outage_seconds = counter(
            "model_fetcher_outage_seconds",
            "Seconds the fetch waited for an unreachable source, summed over outages.",
        )
        self.drift = gauge(
            "model_fetcher_remote_drift_files",
            "Files that differ between the cache and the bucket (sidecar watch).",
        )
        # What is served (issue 15; issue 12 adds the signer): one series, 1, replaced when
        # the model changes. "" for what is not known (no registry, no signature).
        self._model_info = new(
            "Gauge",
            "model_fetcher_model_info",
            "The model being served: its source, registry version, digest and signer.",
            (*_LABELS, *INFO_LABELS),
        )
        self._source_drift = new(
            "Gauge",
            "model_fetcher_source_drift",
            "1 when the source no longer names what is served (sidecar watch), by reason.",
            (*_LABELS, "reason"),
        )

    def model_info(self, labels: Mapping[str, str]) -> None:
        self._model_info.clear()
        info = {name: labels.get(name, "") for name in INFO_LABELS}
        self._model_info.labels(**self._lv, **info).set(1)

    def source_drift(self, reason: str, drifted: bool) -> None:
        self._source_drift.labels(**self._lv, reason=reason).set(1 if drifted else 0)

    def retry(self, reason: str) -> None:
        self._retries.labels(**self._lv, reason=reason).inc()

    def source_change(self, up: bool, outage_seconds: float) -> None:
        """An outage began (up False) or ended after `outage_seconds` (outage.SourceHealth)."""
        self.source_up.set(1 if up else 0)
        self.outage_seconds.inc(outage_seconds)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The body and its Content-Type for a scraper's Accept header (text 0.0.4 by default).

        Prometheus 3 refuses a scrape without a valid versioned Content-Type, and asks for
        OpenMetrics when it can parse it: negotiate exactly as prometheus_client's own server.
        """
        from prometheus_client.exposition import choose_encoder

        assert self.registry is not None, "a MetricsServer runs only with a registry"
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def finish(self, ok: bool, started: float) -> None:
        self.fetch_duration.set(time.monotonic() - started)
        if ok:
            self.last_success.set(time.time())


def push(registry: CollectorRegistry, url: str, instance: str) -> None:
    """Push the final values; a failed push is a warning, never a failed fetch."""
    from prometheus_client.exposition import push_to_gateway

    try:
        push_to_gateway(
            url,
            job="model-fetcher",
            registry=registry,
            grouping_key={"instance": instance},
            timeout=10,
        )
    except Exception as exc:
        log.warning("push_failed", f"could not push metrics to the Pushgateway: {exc}")


def write_textfile(registry: CollectorRegistry, path: str) -> None:
    from prometheus_client.exposition import write_to_textfile

    try:
        write_to_textfile(path, registry)  # temp file + rename: atomic for node-exporter
    except OSError as exc:
        log.warning("textfile_failed", f"could not write metrics to {path}: {exc.strerror}")


class MetricsServer:
    """`/metrics`, `/healthz` and `/readyz` on METRICS_PORT for the whole run (aiohttp).

    Served from the event loop: generating the exposition takes microseconds, and a scrape
    during a 100 GB fetch must show progress. `/readyz` is 200 only once `ready` is set.
    """

    def __init__(self, port: int | None, metrics: Metrics, host: str = "0.0.0.0") -> None:
        self.port, self.host, self.metrics = port, host, metrics
        self.ready = False
        self._runner: Any = None

    async def __aenter__(self) -> MetricsServer:
        if self.port is None:
            return self
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        try:
            sock = _listen(self.host, self.port)
        except OSError as exc:
            await self._runner.cleanup()
            raise ConfigError(f"METRICS_PORT {self.port}: cannot listen: {exc.strerror}") from exc
        await web.SockSite(self._runner, sock).start()
        self.port = sock.getsockname()[1]  # the real port when 0 was asked for
        log.event("metrics", f"serving metrics on :{self.port}", port=self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, request: Any) -> Any:
        from aiohttp import web

        body, content_type = self.metrics.exposition(request.headers.get("Accept", ""))
        return web.Response(
            body=body,
            headers={"Content-Type": content_type, "X-Content-Type-Options": "nosniff"},
        )

    async def _healthz(self, request: Any) -> Any:
        from aiohttp import web

        return web.Response(text="ok\n")

    async def _readyz(self, request: Any) -> Any:
        from aiohttp import web

        if self.ready:
            return web.Response(text="ready\n")
        return web.Response(status=503, text="model not ready\n")


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(64)
    sock.setblocking(False)
    return sock
