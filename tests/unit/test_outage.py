"""The shared outage gate without a network: one probe at a time, all through once it is back,
and the tolerance raised by the probe (issue 14). The end-to-end behaviour against a stopped
and restarted SeaweedFS is tests/faults/test_outage.py."""

from __future__ import annotations

import asyncio

import pytest

from fetcher.config import load
from fetcher.errors import SourceUnreachable, TransientSourceError
from fetcher.transfer.outage import SourceHealth, is_outage

REFUSED = TransientSourceError("cannot connect", reason="connect")


def test_only_outage_kinds_count() -> None:
    assert is_outage(REFUSED)
    assert is_outage(TransientSourceError("x", reason="SlowDown"))
    assert is_outage(TransientSourceError("x", reason="503"))
    assert not is_outage(TransientSourceError("x", reason="short_body"))
    assert not is_outage(ValueError("x"))


def test_while_down_one_probe_at_a_time_then_everyone_goes() -> None:
    changes: list[tuple[bool, float]] = []

    async def scenario() -> tuple[int, int]:
        health = SourceHealth(30.0, lambda up, s: changes.append((up, s)))
        health.failed(REFUSED)
        health.failed(REFUSED)  # already down: no second log, no second change
        inside, most, probes = 0, 0, 0

        async def request(n: int) -> None:
            nonlocal inside, most, probes
            while True:
                async with health.turn():
                    if health.up:
                        return
                    inside += 1  # a probe: the source was down when it was let through
                    most = max(most, inside)
                    await asyncio.sleep(0.01)
                    inside -= 1
                    probes += 1
                    if probes == 3:  # the third probe finds the server back
                        health.ok()
                        return

        await asyncio.gather(*(request(n) for n in range(20)))
        return most, probes

    most, probes = asyncio.run(scenario())
    assert probes == 3
    assert most == 1  # never two probes at once: no thundering herd
    assert [up for up, _ in changes] == [False, True]


def test_past_the_tolerance_the_probe_raises() -> None:
    async def scenario() -> None:
        health = SourceHealth(0.3)
        health.failed(REFUSED)
        while True:
            async with health.turn():
                pass

    with pytest.raises(SourceUnreachable, match=r"FETCH_OUTAGE_TOLERANCE=0\.3s"):
        asyncio.run(scenario())


def test_outage_tolerance_setting() -> None:
    env = {"MINIO_BUCKET": "llm-models", "MODEL_PREFIX": "m/v1/", "MODEL_CACHE_DIR": "/tmp/c"}
    assert load([], env).outage_tolerance == 120.0
    assert load([], {**env, "FETCH_OUTAGE_TOLERANCE": "30s"}).outage_tolerance == 30.0
    assert load(["--outage-tolerance", "5m"], env).outage_tolerance == 300.0


def test_bytes_of_a_request_sent_before_the_outage_do_not_end_it() -> None:
    """A proxy or a socket still delivering what it held from before the outage is not the
    source back: that ended an outage just begun, and the next failure logged a second one
    (test_outage_past_the_tolerance_exits_3_and_resume_fetches_only_the_rest, 1 run in 10)."""
    now = [100.0]
    changes: list[bool] = []
    health = SourceHealth(30.0, lambda up, _: changes.append(up), clock=lambda: now[0])
    sent_before = now[0]
    now[0] += 1
    health.failed(REFUSED)
    now[0] += 1
    health.ok(sent_before)
    assert not health.up and changes == [False]
    health.ok(now[0])  # a request sent during the outage (the probe) answers: back
    assert health.up and changes == [False, True]
