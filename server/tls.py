"""TLS and mutual TLS for the gRPC port, with certificates rotated in place without a restart.

    --tls-cert-file / --tls-key-file   serve TLS only (plaintext connections fail their handshake)
    --tls-client-ca-file               also require a client certificate signed by this CA (mTLS)

The files are checked at start-up (readable, PEM, the key matches the certificate, the CA parses), so a
mistake stops the server with a clear message instead of failing every handshake later. grpc's dynamic
server credentials ask for the configuration at every new handshake: the files' signatures (inode, size,
mtime) are compared and the files re-read only when they changed, as cert-manager or a Kubernetes secret
update rewrites them. A renewed pair that does not load (say, the key written before the certificate) is
skipped with a warning and the previous pair keeps serving until the next handshake finds a good one.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc

from .errors import FailedPreconditionError

__all__ = ["TlsFiles", "server_credentials"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None  # set: clients must present a certificate signed by it

    @classmethod
    def from_settings(cls, cert_file: str, key_file: str, client_ca_file: str) -> TlsFiles | None:
        """The TLS files of these settings; None for plaintext. Raises FailedPreconditionError when only
        some are given."""
        if not cert_file and not key_file:
            if client_ca_file:
                raise FailedPreconditionError(
                    "--tls-client-ca-file needs --tls-cert-file and --tls-key-file", reason="TLS_CONFIG"
                )
            return None
        if not cert_file or not key_file:
            raise FailedPreconditionError(
                "TLS needs both --tls-cert-file and --tls-key-file", reason="TLS_CONFIG"
            )
        return cls(Path(cert_file), Path(key_file), Path(client_ca_file) if client_ca_file else None)

    def paths(self) -> tuple[Path, ...]:
        return (self.cert, self.key) if self.client_ca is None else (self.cert, self.key, self.client_ca)


@dataclass(frozen=True, slots=True)
class _Material:
    signature: tuple[tuple[int, int, int], ...]
    cert: bytes
    key: bytes
    client_ca: bytes | None


def _signature(files: TlsFiles) -> tuple[tuple[int, int, int], ...]:
    stats = [os.stat(path) for path in files.paths()]
    return tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in stats)


def _read(files: TlsFiles) -> _Material:
    """Reads and checks the files. Raises FailedPreconditionError naming the file and the problem."""
    try:
        signature = _signature(files)
        cert, key = files.cert.read_bytes(), files.key.read_bytes()
        client_ca = files.client_ca.read_bytes() if files.client_ca is not None else None
    except OSError as exc:
        raise FailedPreconditionError(f"cannot read a TLS file: {exc}", reason="TLS_FILE_UNREADABLE") from exc
    _check_pair(files, cert, key)
    if client_ca is not None:
        try:
            ssl.create_default_context(cadata=client_ca.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as exc:
            raise FailedPreconditionError(
                f"{files.client_ca} is not a PEM CA certificate: {exc}", reason="TLS_FILE_INVALID"
            ) from exc
    return _Material(signature, cert, key, client_ca)


def _check_pair(files: TlsFiles, cert: bytes, key: bytes) -> None:
    """The key must be the certificate's: Python's ssl loads the pair exactly as a handshake would."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory(prefix="visionrpc-tls-") as folder:  # ssl loads only from files
        cert_copy, key_copy = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        cert_copy.write_bytes(cert)
        key_copy.write_bytes(key)
        key_copy.chmod(0o600)
        try:
            context.load_cert_chain(cert_copy, key_copy)
        except ssl.SSLError as exc:
            problem = (
                "the key does not match the certificate"
                if "KEY_VALUES_MISMATCH" in str(exc)
                else f"not a PEM certificate and key ({exc.reason or exc})"
            )
            raise FailedPreconditionError(
                f"TLS files {files.cert} and {files.key}: {problem}", reason="TLS_FILE_INVALID"
            ) from exc


def _configuration(material: _Material) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(material.key, material.cert)], root_certificates=material.client_ca
    )


class _Rotation:
    """The fetcher grpc calls at each handshake: a new configuration when the files changed, else None."""

    def __init__(self, files: TlsFiles, current: _Material) -> None:
        self._files = files
        self._current = current
        self._lock = threading.Lock()

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            try:
                if _signature(self._files) == self._current.signature:
                    return None
                material = _read(self._files)
            except (OSError, FailedPreconditionError) as exc:
                message = exc.message if isinstance(exc, FailedPreconditionError) else str(exc)
                logger.warning("TLS files changed but do not load (%s); serving the previous pair", message)
                return None
            self._current = material
        logger.info("TLS certificate reloaded from %s", self._files.cert)
        return _configuration(material)


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Credentials for `add_secure_port`; checks the files now (FailedPreconditionError) and follows their
    rotation afterwards."""
    material = _read(files)
    return grpc.dynamic_ssl_server_credentials(
        _configuration(material),
        # grpc-stubs type the fetcher's result without None, which grpc documents as "no change".
        cast("Callable[[], grpc.ServerCertificateConfiguration]", _Rotation(files, material)),
        require_client_authentication=files.client_ca is not None,
    )
