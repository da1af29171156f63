"""Structured logs on stderr: JSON lines in a pod, short text lines in a terminal.

One logger for the whole process. Each record carries an `event` name and fields; JSON keeps
them as keys so log pipelines can query `event="progress"` without parsing prose.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

NAME = "model-fetcher"
_LOGGER = logging.getLogger(NAME)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", "log"),
            "msg": record.getMessage(),
        }
        doc.update(getattr(record, "fields", {}))
        if record.exc_info and _LOGGER.isEnabledFor(logging.DEBUG):
            doc["traceback"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, separators=(",", ":"))


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = getattr(record, "fields", {})
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{stamp} {record.levelname.lower():7} {record.getMessage()}"
        line = f"{line}  {extra}" if extra else line
        if record.exc_info and _LOGGER.isEnabledFor(logging.DEBUG):
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    _LOGGER.handlers[:] = [handler]
    _LOGGER.setLevel(level.upper())
    _LOGGER.propagate = False


def event(name: str, msg: str, level: int = logging.INFO, **fields: Any) -> None:
    _LOGGER.log(level, msg, extra={"event": name, "fields": fields})


def warning(name: str, msg: str, **fields: Any) -> None:
    event(name, msg, logging.WARNING, **fields)


def debug(name: str, msg: str, **fields: Any) -> None:
    event(name, msg, logging.DEBUG, **fields)


def is_debug() -> bool:
    return _LOGGER.isEnabledFor(logging.DEBUG)


def flush() -> None:
    for handler in _LOGGER.handlers:
        handler.flush()
    sys.stderr.flush()
    sys.stdout.flush()
