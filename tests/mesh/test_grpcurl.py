"""Real tools no one here wrote, against a real server: grpcurl lists the services and calls a method through
server reflection, in plaintext and over mutual TLS; grpc_health_probe checks readiness over mTLS; both are
refused without the client certificate, and in plaintext by the TLS server."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from certs import CertificateAuthority
from conftest import cache_root, wait_for
from mesh.tools import Tools
from server_process import ServerProcess
from streaming import free_port

SERVICES = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "visionrpc.v1.InferenceService",
    "visionrpc.v1.ModelService",
    "visionrpc.v1.PipelineService",
    "visionrpc.v1.SharedMemoryService",
]
LIST_MODELS = "visionrpc.v1.ModelService/ListModels"


@dataclass(frozen=True)
class TlsServer:
    address: str
    # grpcurl's flags for a client that trusts the CA and presents its client certificate
    client_flags: tuple[str, ...]
    ca: Path


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def grpcurl(tools: Tools, *args: str) -> subprocess.CompletedProcess[str]:
    return run([str(tools.grpcurl), "-connect-timeout", "3", *args])


@pytest.fixture(scope="module")
def plaintext_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with ServerProcess(tmp_path_factory.mktemp("plain"), "--no-preload-default-model") as server:
        yield server.address


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, tools: Tools) -> Iterator[TlsServer]:
    """A server requiring mutual TLS; ready when grpc_health_probe, speaking mTLS, says SERVING."""
    folder = tmp_path_factory.mktemp("tls")
    ca = CertificateAuthority(folder)
    server_pair, _ = ca.issue("localhost", server=True, cert=folder / "server.pem", key=folder / "server.key")
    client_pair, _ = ca.issue("grpcurl", server=False, cert=folder / "client.pem", key=folder / "client.key")
    port = free_port()
    command = [
        sys.executable, "-m", "visionrpc.server.cli", "serve", "--port", str(port),
        "--model-repository", str(folder / "models"), "--cache-dir", str(cache_root() / "downloads"),
        "--no-preload-default-model", "--tls-cert-file", str(server_pair.cert),
        "--tls-key-file", str(server_pair.key), "--tls-client-ca-file", str(ca.cert),
    ]  # fmt: skip
    log = folder / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    probe = [
        str(tools.health_probe), f"-addr={address}", "-tls", f"-tls-ca-cert={ca.cert}",
        f"-tls-client-cert={client_pair.cert}", f"-tls-client-key={client_pair.key}",
        "-tls-server-name=localhost", "-connect-timeout=1s", "-rpc-timeout=1s",
    ]  # fmt: skip
    try:
        ready = wait_for(lambda: run(probe).returncode == 0 or process.poll() is not None, 120)
        assert ready and process.poll() is None, log.read_text()
        yield TlsServer(
            address,
            ("-cacert", str(ca.cert), "-cert", str(client_pair.cert), "-key", str(client_pair.key)),
            ca.cert,
        )
    finally:
        process.terminate()
        process.wait(30)


def test_grpcurl_lists_and_calls_through_reflection(tools: Tools, plaintext_server: str) -> None:
    listed = grpcurl(tools, "-plaintext", plaintext_server, "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == SERVICES
    called = grpcurl(tools, "-plaintext", "-d", "{}", plaintext_server, LIST_MODELS)
    assert called.returncode == 0, called.stderr
    assert "yolov3-tiny-coco" in {model["name"] for model in json.loads(called.stdout)["models"]}


@pytest.mark.parametrize(
    ("flags", "works"),
    [
        ("mtls", True),  # trusts the CA, presents a client certificate
        ("no client certificate", False),  # the server requires one: the handshake fails
        ("plaintext", False),  # the port speaks TLS only
    ],
)
def test_grpcurl_over_mutual_tls(tools: Tools, tls_server: TlsServer, flags: str, works: bool) -> None:
    chosen = {
        "mtls": tls_server.client_flags,
        "no client certificate": ("-cacert", str(tls_server.ca)),
        "plaintext": ("-plaintext",),
    }[flags]
    listed = grpcurl(tools, *chosen, "-servername", "localhost", tls_server.address, "list")
    called = grpcurl(tools, *chosen, "-servername", "localhost", "-d", "{}", tls_server.address, LIST_MODELS)
    if works:
        assert (listed.returncode, called.returncode) == (0, 0), (listed.stderr, called.stderr)
        assert listed.stdout.split() == SERVICES
        assert json.loads(called.stdout)["models"]
    else:
        # grpcurl waits for a connection that never completes its handshake, then says it could not dial.
        for refused in (listed, called):
            assert refused.returncode != 0 and "Failed to dial target host" in refused.stderr, refused.stderr
