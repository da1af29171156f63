"""One downloader per cache: `flock` on DEST/.fetcher/lock plus a heartbeat lease file.

Several pods may share one cache (replicas on a ReadWriteMany PVC, a rollout where the new pod
starts before the old one stops). `flock` serialises processes on one node, but it can silently
succeed on NFS across hosts (huggingface_hub hit the same on Lustre), so the holder also writes
`lease.json` with its identity and a heartbeat. A fetcher that gets the flock still waits while
another holder's heartbeat is fresh; a lease whose heartbeat is older than its TTL belongs to a
dead holder and is taken over, and so is one whose heartbeat is more than its TTL in the future
(a node's clock far ahead, or a damaged file): otherwise a dead holder would be waited for until
that clock time came.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import math
import os
import socket
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from fetcher.cache.oserrors import os_errors
from fetcher.cache.state import write_json_atomic
from fetcher.cache.store import Cache
from fetcher.observe import log
from fetcher.units import MAX_SECONDS

_POLL = 0.5  # seconds between attempts while another fetcher holds the cache
_WAIT_LOG_EVERY = 15.0


class CacheLease:
    def __init__(self, cache: Cache, identity: str, ttl: float) -> None:
        self.lock_path = cache.meta / "lock"
        self.lease_path = cache.meta / "lease.json"
        self.identity, self.ttl = identity, ttl
        self.me = {"holder": identity, "host": socket.gethostname(), "pid": os.getpid()}
        self._fd = -1
        self._heartbeat: asyncio.Task[None] | None = None

    async def __aenter__(self) -> CacheLease:
        with os_errors("open", self.lock_path):
            self._fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        waited_since = time.monotonic()
        last_log = 0.0
        while not self._try_acquire():
            if time.monotonic() - last_log >= _WAIT_LOG_EVERY:
                last_log = time.monotonic()
                self._log_wait(waited_since)
            await asyncio.sleep(_POLL)
        self._beat()
        self._heartbeat = asyncio.create_task(self._keep_alive())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with suppress(asyncio.CancelledError):
                await self._heartbeat
        if self._holder_is_me(self._read()):
            with suppress(OSError):
                self.lease_path.unlink()
        with suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)

    def _try_acquire(self) -> bool:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as exc:  # e.g. ENOLCK on an NFS mount without lockd: rely on the lease
            log.debug("flock", f"flock unavailable ({exc.strerror}); using the lease file only")
        lease = self._read()
        if lease and lease.get("host") == self.me["host"]:
            lease = None  # same host and we hold the flock: that holder is gone
        if not lease or self._holder_is_me(lease):
            return True
        why = self._stale(lease)
        if why is None:
            with suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            return False  # another host holds a live lease: flock did not see it
        log.warning(
            "lease_takeover",
            f"taking over the cache lease of {_who(lease)}: {why}",
            previous=lease.get("holder"),
        )
        return True

    def _beat(self) -> None:
        write_json_atomic(self.lease_path, {**self.me, "heartbeat": time.time(), "ttl": self.ttl})

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            await asyncio.to_thread(self._beat)

    def _read(self) -> dict[str, Any] | None:
        try:
            doc = json.loads(Path(self.lease_path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def _stale(self, lease: dict[str, Any]) -> str | None:
        """Why the lease no longer holds the cache, or None while its holder may be alive."""
        try:
            age = time.time() - float(lease["heartbeat"])
            ttl = float(lease.get("ttl", self.ttl))
        except (KeyError, TypeError, ValueError):
            return "its lease records no heartbeat"
        if not math.isfinite(age):
            return "its lease records no usable heartbeat"
        if not 0 < ttl <= MAX_SECONDS:
            # No fetcher writes a TTL config would refuse: a damaged lease, not to be kept alive.
            ttl = self.ttl
        # A live holder writes its own clock: ahead by up to the TTL is skew we tolerate; more
        # means a bad clock or a damaged lease, and waiting for that time could be forever.
        if age < -ttl:
            return f"its heartbeat is {_secs(-age)} in the future, more than the {ttl:g}s TTL"
        return None if age < ttl else f"no heartbeat for {_secs(age)}"

    def _holder_is_me(self, lease: dict[str, Any] | None) -> bool:
        if not lease:
            return False
        return all(lease.get(k) == v for k, v in self.me.items())

    def _log_wait(self, since: float) -> None:
        lease = self._read()
        who = _who(lease) if lease else "another process on this node"
        log.event(
            "lease_wait",
            f"waiting for {who} to finish filling the cache",
            holder=lease.get("holder") if lease else None,
            waited_s=round(time.monotonic() - since, 1),
        )


def _who(lease: dict[str, Any]) -> str:
    return f"{lease.get('holder')} (host {lease.get('host')}, pid {lease.get('pid')})"


def _secs(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 1e9 else f"{seconds:.3g}s"
