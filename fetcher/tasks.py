"""Blocking calls that must never hold the process at exit.

asyncio.to_thread runs in the default executor, which the event loop's shutdown waits for: a
call stuck on a silent server (an S3 request: 3 x (connect + read timeout); a Pushgateway
push) kept the process alive long after SIGTERM (207 s measured, past any grace period). A
daemon thread of its own is abandoned at exit, and a cancelled caller stops waiting at once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from contextlib import suppress
from typing import TypeVar

T = TypeVar("T")


async def in_daemon_thread(call: Callable[[], T]) -> T:
    """`call()` in a new daemon thread; its result or exception, awaited."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, exc: BaseException | None) -> None:
        if future.done():
            return  # the caller was cancelled meanwhile
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, exc = call(), None
        except BaseException as error:  # handed to the awaiting task, which raises it
            result, exc = None, error
        with suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(settle, result, exc)

    threading.Thread(target=run, name="blocking-io", daemon=True).start()
    return await future
