"""The bracket around one fetch, shared by `fetch` and `sidecar`: the deadline, the metrics
exposed during the run, and the final push / textfile after it (issue 17: these were written
twice, in cli.py and sidecar.py, which imported each other)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from fetcher.commands.fetch import Fetch, Outcome, summary
from fetcher.commands.served import metric_location, report_served
from fetcher.config import Config
from fetcher.errors import SourceError
from fetcher.observe.metrics import Metrics, MetricsServer, new_registry, push, write_textfile
from fetcher.tasks import in_daemon_thread

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

T = TypeVar("T")


async def with_deadline(cfg: Config, coro: Awaitable[T]) -> T:
    if cfg.deadline is None:
        return await coro
    try:
        async with asyncio.timeout(cfg.deadline):
            return await coro
    except TimeoutError:
        raise SourceError(f"FETCH_DEADLINE of {cfg.deadline:g}s exceeded") from None


def exports_metrics(cfg: Config) -> bool:
    """Whether anything reads this run's metrics: if not, they are not kept (metrics.py)."""
    return bool(cfg.metrics_port is not None or cfg.pushgateway_url or cfg.metrics_textfile)


def publish_metrics(cfg: Config, registry: CollectorRegistry | None) -> None:
    if registry is None:
        return
    if cfg.pushgateway_url:
        push(registry, cfg.pushgateway_url, cfg.identity)
    if cfg.metrics_textfile:
        write_textfile(registry, str(cfg.metrics_textfile))


async def push_metrics(cfg: Config, registry: CollectorRegistry | None) -> None:
    """In a daemon thread: a stuck Pushgateway never holds the exit or readiness."""
    await in_daemon_thread(partial(publish_metrics, cfg, registry))


async def measured_fetch(
    cfg: Config, metrics: Metrics, registry: CollectorRegistry | None, *, push_success: bool = True
) -> Outcome:
    """One fetch under the deadline, its outcome in the metrics. A failure is always pushed;
    a success only when asked (the sidecar pushes after it turned ready)."""
    started = time.monotonic()
    ok = False
    try:
        outcome = await with_deadline(cfg, Fetch(cfg, metrics).run())
        ok = True
    finally:
        metrics.up.set(1 if ok else 0)
        metrics.finish(ok, started)
        if push_success or not ok:
            await push_metrics(cfg, registry)
    summary(outcome, started)
    report_served(cfg.termination_log, outcome.state.source)
    return outcome


async def fetch_and_report(cfg: Config) -> Outcome:
    """One fetch with its metrics exposed during the run and pushed or written after it."""
    registry = new_registry() if exports_metrics(cfg) else None
    metrics = Metrics(registry, *metric_location(cfg))
    async with MetricsServer(cfg.metrics_port, metrics, cfg.metrics_host):
        return await measured_fetch(cfg, metrics, registry)
