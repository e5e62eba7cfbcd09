"""Transitional: the drawing code moved to `visionrpc.common.annotate`, below both the SDK and the server.

The SDK's public name is `visionrpc.client.annotate`. This module stays only until server/streams/pipeline.py
imports `visionrpc.common.annotate` instead of this private one; then delete it.
"""

from visionrpc.common.annotate import annotate

__all__ = ["annotate"]
