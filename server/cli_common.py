"""What every `visionrpc` sub-command module shares: exit codes, usage errors, the SDK client, output helpers.

The command modules (cli, cli_models, cli_stream) build on this one and never on each other, except that cli
assembles the parser from the others' `add_*` functions: no module imports the one that imports it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Protocol

from google.protobuf import json_format
from google.protobuf.message import Message
from visionrpc.client import Client, tls_credentials

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "EXIT_BAD_REQUEST",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "CommandAdder",
    "UsageError",
    "client_for",
    "error",
    "fail",
    "parse_classes",
    "write_json",
]

EXIT_OK, EXIT_FAILURE, EXIT_BAD_REQUEST, EXIT_INTERRUPTED = 0, 1, 2, 130
# The deadline of a call when --timeout is not given.
DEFAULT_TIMEOUT_S = 30.0


class UsageError(Exception):
    """A problem with the command line found before any RPC (a missing file, an unknown built-in)."""


class CommandAdder(Protocol):
    """What `ArgumentParser.add_subparsers()` returns, as far as the command modules use it."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


def client_for(ns: argparse.Namespace, default_timeout_s: float = DEFAULT_TIMEOUT_S) -> Client:
    """An SDK client for --address, with --timeout (or `default_timeout_s`) as its deadline, TLS when a
    --tls-* flag is given, and the API key of --api-key-file or $VISIONRPC_API_KEY."""
    timeout_s = ns.timeout if ns.timeout is not None else default_timeout_s
    ca, cert, key = (getattr(ns, name, None) for name in ("tls_ca_file", "tls_cert_file", "tls_key_file"))
    server_name = getattr(ns, "tls_server_name", None)
    credentials = None
    if ca or cert or key or server_name:
        credentials = tls_credentials(ca, cert, key)
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    key_file = getattr(ns, "api_key_file", None)
    api_key = Path(key_file).read_text().strip() if key_file else os.environ.get("VISIONRPC_API_KEY") or None
    return Client(ns.address, timeout_s=timeout_s, credentials=credentials, api_key=api_key, options=options)


def parse_classes(text: str | None) -> list[str | int] | None:
    """--classes "cup,41" -> ["cup", 41]: names stay names, digits are class ids."""
    if text is None:
        return None
    items = [item.strip() for item in text.split(",") if item.strip()]
    return [int(item) if item.isdigit() else item for item in items]


def write_json(message: Message, *, indent: int | None = 2) -> None:
    """Prints a response as protobuf JSON (indent None: one line, for JSON Lines)."""
    # Proto field names (snake_case) and zero values included: `class_id: 0` is a real class, not "absent".
    text = json_format.MessageToJson(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True, indent=indent
    )
    sys.stdout.write(text + "\n")


def error(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")


def fail(message: str) -> int:
    """Reports a failure that is not the user's (a download, a disk) and returns EXIT_FAILURE."""
    error(message)
    return EXIT_FAILURE
