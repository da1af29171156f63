"""`model-fetcher sidecar`: fetch, then keep serving /metrics, /healthz and /readyz.

For a Kubernetes native sidecar (an init container with `restartPolicy: Always`): its
`/readyz` gates the serving container, and its metrics stay scrapeable for the pod's life.
It never changes files under a running server; with FETCH_WATCH_INTERVAL it only re-lists
the prefix and reports drift in `model_fetcher_remote_drift_files`, and under a registry
alias re-resolves it and reports `model_fetcher_source_drift{reason="alias_moved"}` when the
alias names another version than the one served (issue 15).
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CollectorRegistry

from fetcher.cache.store import Cache
from fetcher.commands.run import measured_fetch, push_metrics
from fetcher.commands.selection import selected
from fetcher.commands.served import metric_location
from fetcher.config import Config
from fetcher.errors import FetchError, ObjectNotFound
from fetcher.observe import log
from fetcher.observe.metrics import Metrics, MetricsServer
from fetcher.source.base import list_model
from fetcher.source.factory import open_source
from fetcher.source.registry.resolve import resolve

DEFAULT_PORT = 9090


async def sidecar(cfg: Config) -> int:
    registry = CollectorRegistry()
    metrics = Metrics(registry, *metric_location(cfg))
    port = DEFAULT_PORT if cfg.metrics_port is None else cfg.metrics_port
    async with MetricsServer(port, metrics, cfg.metrics_host) as server:
        outcome = await measured_fetch(cfg, metrics, registry, push_success=False)
        served = outcome.state.source.get("version")
        server.ready = True  # before the push: a slow Pushgateway must not hold serving back
        log.event(
            "ready", "model ready; serving health and metrics until stopped", port=server.port
        )
        try:
            await push_metrics(cfg, registry)
            await _watch(outcome.cfg or cfg, metrics, cfg, served)
        except asyncio.CancelledError:
            log.event("stopping", "stop signal received; the model stays in place")
            return 0
    return 0


async def _watch(cfg: Config, metrics: Metrics, given: Config, served: str | None) -> None:
    """`cfg` is at the location served; `given` still names the registry URI, if any."""
    if cfg.watch_interval is None:
        await asyncio.Event().wait()  # until cancelled by SIGTERM
    assert cfg.watch_interval is not None
    reported = 0
    moved: str | None = None
    while True:
        await asyncio.sleep(cfg.watch_interval)
        if given.registry_ref is not None and given.registry_ref.alias is not None:
            moved = await _alias_moved(given, metrics, served, moved)
        try:
            drift = await remote_drift(cfg)
        except FetchError as exc:
            log.warning("watch_failed", f"could not re-list the prefix: {exc}")
            continue
        metrics.drift.set(drift)
        if drift != reported:  # once per change, not once per re-list
            reported = drift
            level = logging.WARNING if drift else logging.INFO
            message = f"{drift} files differ between the bucket and the cache"
            log.event("drift", message, level, files=drift)


async def _alias_moved(
    given: Config, metrics: Metrics, served: str | None, reported: str | None
) -> str | None:
    """The version the alias names now, when not the one served (logged once per move)."""
    assert given.registry_ref is not None
    try:
        now = (await resolve(given, given.registry_ref)).version
    except FetchError as exc:
        log.warning("watch_failed", f"could not re-resolve {given.registry_ref.uri}: {exc}")
        return reported
    moved = now if now != served else None
    metrics.source_drift("alias_moved", moved is not None)
    if moved != reported and moved is not None:
        log.warning(
            "alias_moved",
            f"{given.registry_ref.uri} now names version {now}; serving version {served} "
            "until the pod restarts",
            uri=given.registry_ref.uri,
            served=served,
            current=now,
        )
    return moved


async def remote_drift(cfg: Config) -> int:
    """Files new, changed or gone in the bucket compared with what the cache holds."""
    state = Cache(cfg.dest).load_state()
    async with open_source(cfg) as src:
        try:
            found = await list_model(src, cfg.prefix)
        except ObjectNotFound:
            found = []  # the model was deleted from the bucket: every cached file is drift
        listing = selected(found, cfg.include, cfg.exclude)
    remote = {o.rel: (o.size, o.etag) for o in listing}
    local = {rel: (fs.size, fs.etag) for rel, fs in state.files.items()}
    return sum(1 for rel in remote.keys() | local.keys() if remote.get(rel) != local.get(rel))
