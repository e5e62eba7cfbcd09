"""visionrpc.common — code that both the server and the Python SDK use, below both of them.

It imports neither `visionrpc.server`, `visionrpc.engines` nor `visionrpc.client` (an import-linter contract
in pyproject.toml says so): what it needs of their objects it states as small Protocols, which the server's
domain objects and the SDK's types both satisfy.

    visionrpc.common.annotate   drawing predictions on images (OpenCV, imported on first use)
"""
