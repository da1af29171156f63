"""One shared view of whether the source is reachable, consulted by every part (issue 14).

Without it each part retried on its own: a MinIO restart made ~38 parts fail at once, each
with its own attempts and random waits, against a server that refused at once, so the
unluckiest part ran out of attempts within seconds and cancelled the whole fetch (1 run in 3
failed with a 4.5 s outage). Here a failure of the outage kind (connection refused or reset
before any byte, DNS, timeouts, 500/502/503/504, SlowDown) marks the source down for everyone:
new requests wait at `turn()`, one of them at a time goes as a probe after a backoff with
jitter, and the first request that succeeds (or receives a byte) lets all of them through.
While it is down no part spends its attempts; the bound is FETCH_OUTAGE_TOLERANCE of wall
time, after which the probe raises SourceUnreachable (exit 3) and the journals keep what was
done. An outage is logged once when it starts and once when it ends, with its length.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from fetcher.errors import SourceUnreachable, TLSFailure, TransientSourceError
from fetcher.observe import log

# Reasons (TransientSourceError.reason) that say the source itself is away, not this request:
# the connection could not be made or died before the response, nothing was heard for the
# read timeout, or the server said it is unavailable or overloaded.
OUTAGE_REASONS = frozenset(
    {
        "connect",
        "connect_timeout",
        "reset",
        "read_timeout",
        "500",
        "502",
        "503",
        "504",
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
    }
)
_PROBE_BASE, _PROBE_CAP = 0.25, 5.0

# up (True) or down (False), and the seconds of the outage that just ended (0 when it starts)
OnChange = Callable[[bool, float], None]
T = TypeVar("T")


def is_outage(exc: BaseException) -> bool:
    return isinstance(exc, TransientSourceError) and exc.reason in OUTAGE_REASONS


class SourceHealth:
    """Up or down, shared by all parts of one process; see the module docstring."""

    def __init__(
        self,
        tolerance: float,
        on_change: OnChange | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tolerance, self.on_change, self.clock = tolerance, on_change, clock
        self.down_since: float | None = None
        self.probes = 0  # probes sent in the current outage: their backoff grows with it
        self.last_error = ""
        self._probe = asyncio.Lock()  # FIFO: waiters take turns, most see the source back

    @property
    def up(self) -> bool:
        return self.down_since is None

    def failed(self, exc: BaseException) -> None:
        """An outage-kind failure with no byte received: the source is down from now."""
        self.last_error = str(exc)
        if self.down_since is not None:
            return
        self.down_since, self.probes = self.clock(), 0
        log.warning(
            "source_unreachable",
            f"source unreachable ({exc}); waiting up to {self.tolerance:g}s for it "
            "(FETCH_OUTAGE_TOLERANCE)",
            tolerance_s=self.tolerance,
        )
        if self.on_change is not None:
            self.on_change(False, 0.0)

    def ok(self, sent_at: float | None = None) -> None:
        """A request succeeded or received bytes: the source is back, for everyone. Not if
        the request was sent (`sent_at`, by `clock`) before the outage began: bytes a proxy
        or a socket still held from before say nothing of the source now (they ended an
        outage just begun, and the next failure logged a second one)."""
        if self.down_since is None or (sent_at is not None and sent_at < self.down_since):
            return
        seconds = self.clock() - self.down_since
        self.down_since = None
        log.event(
            "source_back",
            f"source reachable again after {seconds:.1f}s",
            outage_s=round(seconds, 3),
            probes=self.probes,
        )
        if self.on_change is not None:
            self.on_change(True, seconds)

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Around one request: at once while the source is up; while it is down, one caller
        at a time goes (the probe, after its backoff), the others wait for its answer."""
        if self.down_since is None:
            yield
            return
        await self._probe.acquire()
        if self.down_since is None:  # the probe before us found it back: no turn needed
            self._probe.release()
            yield
            return
        try:
            await self._before_probe()
            yield
        finally:
            self._probe.release()

    async def _before_probe(self) -> None:
        assert self.down_since is not None
        self._check_tolerance()
        self.probes += 1
        # Equal jitter: at least half the step, so probes stay spaced however the dice fall
        # (full jitter may send several at once, the herd this is meant to stop).
        step = min(_PROBE_CAP, _PROBE_BASE * 2**self.probes)
        wait = random.uniform(step / 2, step)
        remaining = self.down_since + self.tolerance - self.clock()
        await asyncio.sleep(max(0.0, min(wait, remaining)))
        self._check_tolerance()

    def _check_tolerance(self) -> None:
        if self.down_since is None:
            return
        down = self.clock() - self.down_since
        if down >= self.tolerance:
            raise SourceUnreachable(
                f"source unreachable for {down:.1f}s, longer than FETCH_OUTAGE_TOLERANCE="
                f"{self.tolerance:g}s ({self.last_error}); completed parts are kept for the "
                "next start"
            )


async def ride_out(call: Callable[[], Awaitable[T]], health: SourceHealth) -> T:
    """`call()` (a control-plane request, such as the first LIST) until it answers, waiting
    out an unreachable source as the parts do: one attempt at a time after a backoff, for up
    to the tolerance, then SourceUnreachable. A TLS failure is not an outage: raised at once."""
    while True:
        async with health.turn():
            try:
                result = await call()
            except (SourceUnreachable, TransientSourceError) as exc:
                unreachable = isinstance(exc, SourceUnreachable) and not isinstance(exc, TLSFailure)
                if not (unreachable or is_outage(exc)):
                    raise
                health.failed(exc)
                continue
        health.ok()
        return result
