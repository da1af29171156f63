"""Structured-concurrency helpers used by every layer.

`run_all`: run coroutines in one TaskGroup; the first failure cancels the rest and is raised
alone (`root_cause` picks our error out of the nested ExceptionGroup).

`in_daemon_thread`: blocking calls that must never hold the process at exit.
asyncio.to_thread runs in the default executor, which the event loop's shutdown waits for: a
call stuck on a silent server (an S3 request: 3 x (connect + read timeout); a Pushgateway
push) kept the process alive long after SIGTERM (207 s measured, past any grace period). A
daemon thread of its own is abandoned at exit, and a cancelled caller stops waiting at once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterable
from contextlib import suppress
from typing import Any, TypeVar

from fetcher.errors import FetchError

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


def root_cause(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first error of ours in a (nested) group: the reason the run failed."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    ours = [e for e in leaves if isinstance(e, FetchError)]
    return (ours or leaves)[0]


async def run_all(coros: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run concurrently; the first failure cancels the rest and is raised alone."""
    try:
        async with asyncio.TaskGroup() as tg:
            for coro in coros:
                tg.create_task(coro)
    except BaseExceptionGroup as group:
        raise root_cause(group) from group
