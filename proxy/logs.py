"""Logging set-up: one line per event, as text for people or JSON for Vector/Filebeat.

JSON lines carry stable field names: timestamp, level, event, message, and when they apply app, target, worker,
version, error (plus a few event-specific numbers). Callers pass fields through `extra=`, via `log_event`.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

FIELDS = ("event", "app", "target", "worker", "version", "error", "port", "ports", "workers", "ms", "pid")


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        worker = getattr(record, "worker", None)
        speaker = f"worker {worker}" if record.name == "worker" and worker is not None else record.name
        line = f"{_timestamp(record)} {record.levelname:<7} {speaker}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": _timestamp(record),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", "log"),
            "process": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS[1:]:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def setup_logging(fmt: str, level: str, name: str) -> logging.Logger:
    """Route all records to stderr in the chosen format; `name` says which process speaks."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return logging.getLogger(name)


def log_event(logger: logging.Logger, level: int, event: str, message: str, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={"event": event, **fields})


def plural(n: int, noun: str) -> str:
    """'1 worker', '2 workers': log lines read as sentences."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
