"""The webhook sink: one HTTP POST of JSON (encoding.py) per message worth sending, signed given a secret.

Headers of every POST:

    Content-Type: application/json
    X-Visionrpc-Delivery: <32 hex digits>     the message's id, the same on each retry (deduplicate on it)
    X-Visionrpc-Timestamp: <unix seconds>     signed POSTs: when this attempt was signed
    X-Visionrpc-Signature: sha256=<hex>       signed POSTs: HMAC-SHA256(secret, "<timestamp>.<body>")

A 2xx answer delivers the message; connection errors, timeouts, 408, 429 and 5xx are retried with backoff;
any other answer (redirects included: a webhook is not followed elsewhere) drops it. docs/sinks.md shows how a
receiver verifies the signature and rejects replays.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import logging
import ssl
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..streams.types import StreamMessage
from .base import SinkStatus
from .config import WebhookSinkConfig
from .encoding import encode_message
from .worker import DeliveryError, SinkWorker

__all__ = ["DELIVERY_HEADER", "SIGNATURE_HEADER", "TIMESTAMP_HEADER", "WebhookSink", "signature"]

logger = logging.getLogger(__name__)

DELIVERY_HEADER = "X-Visionrpc-Delivery"
TIMESTAMP_HEADER = "X-Visionrpc-Timestamp"
SIGNATURE_HEADER = "X-Visionrpc-Signature"
_RETRYABLE_STATUSES = frozenset({408, 429})
_MAX_RESPONSE_BYTES = 64 * 1024  # what is read of an answer (so the connection closes cleanly); ignored


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Visionrpc-Signature value: `sha256=` and the hex HMAC-SHA256 of "<timestamp>.<body>"."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


@dataclass(frozen=True, slots=True)
class _Delivery:
    body: bytes
    delivery_id: str


class WebhookSink:
    kind = "webhook"
    needs_pixels = False

    def __init__(self, config: WebhookSinkConfig) -> None:
        self.name = config.name
        self._config = config
        parts = urlsplit(config.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # For errors and logs: no query string, which may hold a token.
        self._shown = f"{parts.scheme}://{parts.netloc}{parts.path}"
        self._ssl = ssl.create_default_context() if self._https else None
        self._worker: SinkWorker[_Delivery] = SinkWorker(
            self.name, self.kind, deliver=self._post, queue_size=config.queue_size, retry=config.retry
        )

    def offer(self, pipeline: str, message: StreamMessage) -> None:
        try:
            body = encode_message(
                pipeline, message, content=self._config.content, include_status=self._config.include_status
            )
        except Exception as exc:  # never raise into the pipeline
            logger.exception("webhook sink %s cannot encode a message", self.name)
            self._worker.drop(f"cannot encode: {exc!r}")
            return
        if body is not None:
            self._worker.put(_Delivery(body, uuid.uuid4().hex))

    def status(self) -> SinkStatus:
        return self._worker.status()

    def close(self, timeout_s: float = 5.0) -> None:
        self._worker.close(timeout_s)

    def _post(self, delivery: _Delivery) -> None:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "visionrpc-webhook",
            DELIVERY_HEADER: delivery.delivery_id,
        }
        headers.update(self._config.headers)
        if self._config.secret:
            # Signed per attempt: a retry carries a fresh timestamp, so receivers can refuse stale ones.
            timestamp = str(int(time.time()))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = signature(self._config.secret, timestamp, delivery.body)
        connection = self._connect()
        try:
            connection.request("POST", self._target, body=delivery.body, headers=headers)
            response = connection.getresponse()
            response.read(_MAX_RESPONSE_BYTES)
            status = response.status
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, garbled
            raise DeliveryError(f"POST {self._shown}: {exc!r}") from None
        finally:
            connection.close()
        if 200 <= status < 300:
            return
        raise DeliveryError(
            f"POST {self._shown}: HTTP {status}",
            retryable=status >= 500 or status in _RETRYABLE_STATUSES,
        )

    def _connect(self) -> http.client.HTTPConnection:
        # A connection per POST: events are sparse, and a fresh one never trips on a receiver's idle timeout.
        # The timeout bounds the connect and every read of the answer.
        if self._https:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self._config.timeout_s, context=self._ssl
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self._config.timeout_s)
