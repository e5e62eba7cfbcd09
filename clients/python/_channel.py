"""How the client's channel is built: TLS files, API key, and the default service config.

The service config is gRPC's own (gRFC A6): retries of UNAVAILABLE (a replica draining or restarting) with
exponential backoff, honouring the server's `grpc-retry-pushback-ms`, for Infer and the model service.
StreamPredictions is left out: the SDK resumes streams itself, from the last message it saw. Balancing stays
gRPC's pick_first: a stream resumed after a connection recycle must reach the replica whose pipeline holds
its replay ring (round_robin would restart it elsewhere); spread calls with a proxy, xDS or several clients
(docs/operations.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import grpc

__all__ = ["DEFAULT_SERVICE_CONFIG", "open_channel", "tls_credentials"]

DEFAULT_SERVICE_CONFIG: Final = json.dumps(
    {
        "methodConfig": [
            {
                # Not StreamPredictions: the SDK resumes streams itself, from the last message it saw.
                "name": [
                    {"service": "visionrpc.v1.InferenceService", "method": "Infer"},
                    {"service": "visionrpc.v1.ModelService"},
                ],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)


def tls_credentials(
    ca_file: str | Path | None = None, cert_file: str | Path | None = None, key_file: str | Path | None = None
) -> grpc.ChannelCredentials:
    """TLS channel credentials from PEM files: `ca_file` to trust the server (None: the system's roots),
    `cert_file` and `key_file` to present a client certificate (mutual TLS)."""
    if (cert_file is None) != (key_file is None):
        raise ValueError("a client certificate needs both cert_file and key_file")
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca_file).read_bytes() if ca_file is not None else None,
        private_key=Path(key_file).read_bytes() if key_file is not None else None,
        certificate_chain=Path(cert_file).read_bytes() if cert_file is not None else None,
    )


if TYPE_CHECKING:  # generic only in grpc-stubs
    _UnaryUnary = grpc.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.UnaryStreamClientInterceptor[Any, Any]
else:
    _UnaryUnary = grpc.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.UnaryStreamClientInterceptor


class _KeyInterceptor(_UnaryUnary, _UnaryStream):
    """Adds `authorization: Bearer <key>` to every call on a plaintext channel (gRPC refuses call
    credentials without TLS; inside a mesh the sidecar's mTLS protects the hop)."""

    def __init__(self, api_key: str) -> None:
        self._metadata = ("authorization", f"Bearer {api_key}")

    def _with_key(self, client_call_details: Any) -> Any:
        metadata = [*(client_call_details.metadata or ()), self._metadata]
        return client_call_details._replace(metadata=metadata)

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return continuation(self._with_key(client_call_details), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return continuation(self._with_key(client_call_details), request)


def open_channel(
    address: str,
    credentials: grpc.ChannelCredentials | None,
    api_key: str | None,
    options: Sequence[tuple[str, Any]],
) -> grpc.Channel:
    """A channel to `address`: TLS when `credentials` is given (the key then travels as call credentials),
    plaintext otherwise (the key as metadata)."""
    if api_key is not None and not api_key.strip():
        raise ValueError("expected a non-empty api_key or None")
    if credentials is not None:
        if api_key is not None:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(api_key.strip())
            )
        return grpc.secure_channel(address, credentials, options=list(options))
    channel = grpc.insecure_channel(address, options=list(options))
    if api_key is not None:
        return grpc.intercept_channel(channel, _KeyInterceptor(api_key.strip()))
    return channel
