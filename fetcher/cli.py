"""Entry point: parse, run one command on uvloop, map the outcome to an exit code.

Errors end as one line on stderr (a traceback only with LOG_LEVEL=debug) and, when the file is
writable, one line in /dev/termination-log so `kubectl describe pod` shows why.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import uvloop

from fetcher.commands.run import fetch_and_report
from fetcher.config import Config, load
from fetcher.errors import (
    EXIT_SIGINT,
    EXIT_SIGTERM,
    ConfigError,
    FetchError,
    InternalError,
    Stopped,
)
from fetcher.handoff import check_serve, exec_serve
from fetcher.observe import log

T = TypeVar("T")


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load(args, os.environ, stderr_isatty=sys.stderr.isatty())
    except ConfigError as exc:
        _fail_config(exc, os.environ.get("FETCH_TERMINATION_LOG", "/dev/termination-log"))
    log.setup(cfg.log_format, cfg.log_level)
    for notice in cfg.notices:
        log.warning("setting_ignored", notice)
    try:
        code = _dispatch(cfg)
    except FetchError as exc:
        code = _report(exc, cfg.termination_log)
    except Exception as exc:
        code = _report(InternalError(f"{type(exc).__name__}: {exc}"), cfg.termination_log)
        if log.is_debug():
            log.event("traceback", _traceback(exc), 10)
    log.flush()
    # Everything left dies with the process: frozen, it is skipped by the collections the
    # interpreter makes on its way out, 25-30 ms of a 0.2 s start on this VM (median of 15
    # `python -c "import fetcher.cli"` with and without, same minute).
    gc.freeze()
    sys.exit(code)


def _dispatch(cfg: Config) -> int:
    if cfg.command == "verify":
        from fetcher.commands.inspect import verify_command

        return verify_command(cfg)
    if cfg.command == "status":
        from fetcher.commands.inspect import status_command

        return status_command(cfg)
    if cfg.command == "publish":
        from fetcher.commands.publish import publish

        return run_async(lambda: publish(cfg))
    if cfg.command == "sidecar":
        from fetcher.commands.sidecar import sidecar

        return run_async(lambda: sidecar(cfg))
    if cfg.serve_cmd:
        check_serve(cfg.serve_cmd)
    run_async(lambda: fetch_and_report(cfg))
    if cfg.serve_cmd:
        exec_serve(cfg.serve_cmd, os.environ, cfg.trust.keep_credentials)
    return 0


def run_async(main_fn: Callable[[], Awaitable[T]]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(with_signals(main_fn))


async def with_signals(main_fn: Callable[[], Awaitable[T]]) -> T:
    """SIGTERM/SIGINT cancel the run; TaskGroups unwind and completed parts stay journaled."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    received: list[int] = []

    def on_signal(signum: int) -> None:
        if not received:
            received.append(signum)
            log.warning("signal", f"received {signal.Signals(signum).name}; stopping")
            task.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        return await main_fn()
    except asyncio.CancelledError:
        if received:
            code = EXIT_SIGTERM if received[0] == signal.SIGTERM else EXIT_SIGINT
            raise Stopped(received[0], code) from None
        raise
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def _report(exc: FetchError, termination_log: Path) -> int:
    message = f"{_kind(exc)}: {exc}"
    log.event(
        "error",
        message,
        40,
        exit_code=exc.exit_code,
        **({"traceback": _traceback(exc)} if log.is_debug() else {}),
    )
    _write_termination_log(termination_log, message)
    return exc.exit_code


def _kind(exc: FetchError) -> str:
    names = {
        2: "configuration error",
        3: "source error",
        4: "integrity error",
        5: "cache error",
        130: "stopped",
        143: "stopped",
    }
    return names.get(exc.exit_code, "error")


def _traceback(exc: BaseException) -> str:
    import traceback

    return "".join(traceback.format_exception(exc))


def _fail_config(exc: ConfigError, termination_log: str) -> None:
    """One line in the format the settings asked for (JSON by default when stderr is not a
    TTY, as every other line), or plain text where even LOG_FORMAT could not be read."""
    message = "configuration error: " + "; ".join(exc.problems)
    if exc.log_format == "json":
        log.setup("json", "info")
        log.event("error", message, 40, exit_code=exc.exit_code, problems=exc.problems)
        log.flush()
    else:
        print(f"model-fetcher: {message}", file=sys.stderr)
    where = exc.termination_log if isinstance(exc.termination_log, Path) else None
    _write_termination_log(where or Path(termination_log), message)
    sys.exit(exc.exit_code)


def _write_termination_log(path: Path, message: str) -> None:
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(message[:4000] + "\n")
    except OSError:
        pass  # not in a pod, or not writable: stderr already has it
