"""Logging set-up: plain text or JSON lines, each record carrying the id of the call it belongs to.

The call's id is the client's `x-request-id` metadata when it sends one, else a fresh one; the call
interceptor sets it (`REQUEST_ID`) for the call's task, and the inference path carries it into the worker
threads, so a log line written while decoding or preprocessing names its call too. JSON lines (`--log-format
json`) also carry the OpenTelemetry trace and span ids when tracing is on, so logs and traces join up.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time

from opentelemetry import trace

__all__ = ["REQUEST_ID", "JsonFormatter", "configure_logging"]

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("visionrpc_request_id", default="")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(request)s: %(message)s"


class _RequestIdFilter(logging.Filter):
    """Stamps each record with its call's id (empty outside calls)."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = REQUEST_ID.get()
        record.request_id = request_id
        record.request = f" [{request_id}]" if request_id else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339, UTC), level, logger, message, request_id, trace ids and
    the exception's traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", "")
        if request_id:
            entry["request_id"] = request_id
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = f"{span.trace_id:032x}"
            entry["span_id"] = f"{span.span_id:016x}"
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, log_format: str) -> None:
    """Sets the root logger up once, at start-up: `log_format` "text" or "json"."""
    if log_format not in ("text", "json"):
        raise ValueError(f"expected log_format text or json, got {log_format!r}")
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(_TEXT_FORMAT))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
