"""TLS, mutual TLS, certificate rotation and API keys, through real servers, real channels and real
certificates made by a test CA."""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from certs import CertificateAuthority, Pair
from conftest import RunningServer, start_server, wait_for
from cryptography import x509
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from media import media
from visionrpc.client import Client, tls_credentials
from visionrpc.server.app import create_server
from visionrpc.server.config import ServerConfig
from visionrpc.server.errors import FailedPreconditionError
from visionrpc.v1 import inference_pb2, inference_pb2_grpc, models_pb2, models_pb2_grpc, types_pb2

INFERENCE_KEY = "inference-key-0123456789"
ADMIN_KEY = "admin-key-9876543210"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertificateAuthority, Pair, Pair]:
    folder = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(folder)
    server_pair, _ = ca.issue("server", server=True, cert=folder / "server.pem", key=folder / "server.key")
    client_pair, _ = ca.issue("client", server=False, cert=folder / "client.pem", key=folder / "client.key")
    return ca, server_pair, client_pair


def health_status(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(service=""), metadata=metadata, timeout=5).status)


def served_serial(port: int, ca: Path) -> int:
    """The serial number of the certificate a fresh TLS handshake on `port` presents."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


@pytest.fixture
def tls_server(
    base_config: ServerConfig, tmp_path: Path, pki: tuple[CertificateAuthority, Pair, Pair]
) -> Iterator[RunningServer]:
    ca, _, _ = pki
    pair, _ = ca.issue("server", server=True, cert=tmp_path / "tls.pem", key=tmp_path / "tls.key")
    config = replace(
        base_config,
        model_repository=tmp_path / "models",
        preload_default_model=False,
        tls_cert_file=str(pair.cert),
        tls_key_file=str(pair.key),
    )
    running = start_server(config)
    yield running
    running.server.stop(grace_s=0.5)


def test_tls_server_refuses_plaintext_and_serves_tls(
    tls_server: RunningServer, pki: tuple[CertificateAuthority, Pair, Pair]
) -> None:
    ca, _, _ = pki
    with grpc.insecure_channel(tls_server.address) as plaintext, pytest.raises(grpc.RpcError) as refused:
        health_status(plaintext)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    with grpc.secure_channel(f"localhost:{tls_server.port}", tls_credentials(ca.cert)) as channel:
        assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING


def test_rotated_certificate_is_served_without_restart(
    tls_server: RunningServer, pki: tuple[CertificateAuthority, Pair, Pair]
) -> None:
    ca, _, _ = pki
    cert, key = Path(tls_server.config.tls_cert_file), Path(tls_server.config.tls_key_file)
    before = served_serial(tls_server.port, ca.cert)
    _, renewed = ca.issue("server", server=True, cert=cert, key=key)  # in place, as cert-manager does
    assert renewed != before
    assert wait_for(lambda: served_serial(tls_server.port, ca.cert) == renewed, timeout_s=10)
    with Client(f"localhost:{tls_server.port}", credentials=tls_credentials(ca.cert)) as client:
        assert client.health() == "SERVING"


@pytest.mark.parametrize(
    "client_cert",
    [
        pytest.param("none", id="no client certificate"),
        pytest.param("other-ca", id="certificate from another CA"),
        pytest.param("valid", id="certificate from the client CA"),
    ],
)
def test_mutual_tls_requires_a_client_certificate_from_its_ca(
    base_config: ServerConfig,
    tmp_path: Path,
    pki: tuple[CertificateAuthority, Pair, Pair],
    client_cert: str,
) -> None:
    ca, server_pair, client_pair = pki
    config = replace(
        base_config,
        model_repository=tmp_path / "models",
        preload_default_model=False,
        tls_cert_file=str(server_pair.cert),
        tls_key_file=str(server_pair.key),
        tls_client_ca_file=str(ca.cert),
    )
    running = start_server(config)
    try:
        if client_cert == "none":
            credentials = tls_credentials(ca.cert)
        elif client_cert == "other-ca":
            other = CertificateAuthority(tmp_path, "other")
            pair, _ = other.issue("intruder", server=False, cert=tmp_path / "i.pem", key=tmp_path / "i.key")
            credentials = tls_credentials(ca.cert, pair.cert, pair.key)
        else:
            credentials = tls_credentials(ca.cert, client_pair.cert, client_pair.key)
        with grpc.secure_channel(f"localhost:{running.port}", credentials) as channel:
            if client_cert == "valid":
                assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING
            else:
                with pytest.raises(grpc.RpcError) as refused:
                    health_status(channel)
                assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        running.server.stop(grace_s=0.5)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        pytest.param("cert-only", "needs both --tls-cert-file and --tls-key-file", id="certificate only"),
        pytest.param("ca-only", "--tls-client-ca-file needs", id="client CA only"),
        pytest.param("missing", "cannot read a TLS file", id="missing file"),
        pytest.param("mismatched", "the key does not match the certificate", id="key of another cert"),
        pytest.param("not-pem", "not a PEM certificate and key", id="not PEM"),
        pytest.param("bad-ca", "is not a PEM CA certificate", id="client CA not PEM"),
    ],
)
def test_tls_mistakes_stop_the_server_at_start_up(
    base_config: ServerConfig,
    tmp_path: Path,
    pki: tuple[CertificateAuthority, Pair, Pair],
    files: str,
    message: str,
) -> None:
    ca, server_pair, client_pair = pki
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    settings = {
        "cert-only": (str(server_pair.cert), "", ""),
        "ca-only": ("", "", str(ca.cert)),
        "missing": (str(tmp_path / "absent.pem"), str(server_pair.key), ""),
        "mismatched": (str(server_pair.cert), str(client_pair.key), ""),
        "not-pem": (str(junk), str(server_pair.key), ""),
        "bad-ca": (str(server_pair.cert), str(server_pair.key), str(junk)),
    }[files]
    config = replace(
        base_config,
        model_repository=tmp_path / "models",
        preload_default_model=False,
        tls_cert_file=settings[0],
        tls_key_file=settings[1],
        tls_client_ca_file=settings[2],
    )
    with pytest.raises(FailedPreconditionError, match=message.replace("-", r"\-")):
        create_server(config)


# -- API keys ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_server(
    base_config: ServerConfig, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("keys")
    (folder / "api-keys").write_text(f"# inference clients\n{INFERENCE_KEY}\n\n")
    (folder / "admin-keys").write_text(f"{ADMIN_KEY}\n")
    config = replace(
        base_config,
        model_repository=folder / "models",
        api_keys_file=str(folder / "api-keys"),
        admin_keys_file=str(folder / "admin-keys"),
    )
    running = start_server(config)
    running.server.wait_until_ready(timeout_s=300)
    yield running
    running.server.stop(grace_s=0.5)


def _metadata(key: str | None, header: str = "authorization") -> tuple[tuple[str, str], ...]:
    if key is None:
        return ()
    return ((header, f"Bearer {key}" if header == "authorization" else key),)


def _reason(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "the refusal carries no rich status"
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    raise AssertionError("no ErrorInfo in the refusal")


def _call(channel: grpc.Channel, method: str, metadata: tuple[tuple[str, str], ...]) -> None:
    inference = inference_pb2_grpc.InferenceServiceStub(channel)
    models = models_pb2_grpc.ModelServiceStub(channel)
    photo = types_pb2.Image(encoded=media("coffee.png").read_bytes())
    if method == "Infer":
        inference.Infer(inference_pb2.InferRequest(images=[photo]), metadata=metadata, timeout=30)
    elif method == "StreamPredictions":
        request = inference_pb2.StreamPredictionsRequest(
            sources=[inference_pb2.VideoSource(path="bikes.mp4")]
        )
        stream = inference.StreamPredictions(request, metadata=metadata, timeout=30)
        next(iter(stream))
        stream.cancel()
    elif method == "ListModels":
        models.ListModels(models_pb2.ListModelsRequest(), metadata=metadata, timeout=30)
    elif method == "LoadModel":
        models.LoadModel(
            models_pb2.LoadModelRequest(model_id="yolov3-tiny-coco"), metadata=metadata, timeout=60
        )
    elif method == "Health":
        health_status(channel, metadata)
    else:
        raise AssertionError(method)


ACCESS_CASES = [
    # (method, key, header, expected code, expected reason)
    ("Infer", None, "authorization", grpc.StatusCode.UNAUTHENTICATED, "MISSING_API_KEY"),
    ("Infer", "wrong-key", "authorization", grpc.StatusCode.UNAUTHENTICATED, "UNKNOWN_API_KEY"),
    ("Infer", INFERENCE_KEY, "authorization", grpc.StatusCode.OK, ""),
    ("Infer", INFERENCE_KEY, "x-api-key", grpc.StatusCode.OK, ""),
    ("Infer", ADMIN_KEY, "authorization", grpc.StatusCode.OK, ""),
    ("StreamPredictions", None, "authorization", grpc.StatusCode.UNAUTHENTICATED, "MISSING_API_KEY"),
    ("StreamPredictions", "wrong-key", "authorization", grpc.StatusCode.UNAUTHENTICATED, "UNKNOWN_API_KEY"),
    ("StreamPredictions", INFERENCE_KEY, "authorization", grpc.StatusCode.OK, ""),
    ("ListModels", INFERENCE_KEY, "authorization", grpc.StatusCode.OK, ""),
    ("LoadModel", None, "authorization", grpc.StatusCode.UNAUTHENTICATED, "MISSING_API_KEY"),
    ("LoadModel", "wrong-key", "authorization", grpc.StatusCode.UNAUTHENTICATED, "UNKNOWN_API_KEY"),
    ("LoadModel", INFERENCE_KEY, "authorization", grpc.StatusCode.PERMISSION_DENIED, "ADMIN_KEY_REQUIRED"),
    ("LoadModel", ADMIN_KEY, "authorization", grpc.StatusCode.OK, ""),
    ("Health", None, "authorization", grpc.StatusCode.OK, ""),
]


@pytest.mark.parametrize(
    ("method", "key", "header", "code", "reason"),
    ACCESS_CASES,
    ids=[f"{m}-{'none' if k is None else k.split('-')[0]}-{h}" for m, k, h, _, _ in ACCESS_CASES],
)
def test_api_keys_decide_who_calls_what(
    keyed_server: RunningServer,
    method: str,
    key: str | None,
    header: str,
    code: grpc.StatusCode,
    reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with grpc.insecure_channel(keyed_server.address) as channel:
        if code is grpc.StatusCode.OK:
            _call(channel, method, _metadata(key, header))
        else:
            with pytest.raises(grpc.RpcError) as refused:
                _call(channel, method, _metadata(key, header))
            assert refused.value.code() is code
            assert _reason(refused.value) == reason
    for secret in (INFERENCE_KEY, ADMIN_KEY):
        assert secret not in caplog.text, "a key reached the log"


def test_reflection_is_exempt(keyed_server: RunningServer) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(keyed_server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        services = {s.name for s in next(iter(answers)).list_services_response.service}
    assert "visionrpc.v1.InferenceService" in services


def test_sdk_sends_its_api_key_and_maps_the_refusal(keyed_server: RunningServer) -> None:
    from visionrpc.client import PermissionDeniedError, UnauthenticatedError

    with Client(keyed_server.address) as anonymous, pytest.raises(UnauthenticatedError):
        anonymous.infer(media("coffee.png"))
    with Client(keyed_server.address, api_key=INFERENCE_KEY) as client:
        assert client.infer(media("coffee.png")).predictions
        with pytest.raises(PermissionDeniedError):
            client.unload_model("yolov3-tiny-coco")


def test_a_rotated_key_file_takes_effect_without_restart(keyed_server: RunningServer) -> None:
    keys = Path(keyed_server.config.api_keys_file)
    original = keys.read_text()
    try:
        keys.write_text("rotated-key-abcdef\n")
        with grpc.insecure_channel(keyed_server.address) as channel:

            def accepted(key: str) -> bool:
                try:
                    _call(channel, "ListModels", _metadata(key))
                    return True
                except grpc.RpcError as exc:
                    assert exc.code() is grpc.StatusCode.UNAUTHENTICATED
                    return False

            assert wait_for(lambda: accepted("rotated-key-abcdef"), timeout_s=10)
            assert not accepted(INFERENCE_KEY)
            keys.write_text(original)
            # The module's other tests use the original keys: wait until the server reads them back.
            assert wait_for(lambda: accepted(INFERENCE_KEY), timeout_s=10)
    finally:
        keys.write_text(original)


def test_cli_health_speaks_tls_and_keys(
    tls_server: RunningServer,
    keyed_server: RunningServer,
    pki: tuple[CertificateAuthority, Pair, Pair],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """What the chart's exec probes run against a TLS server (the kubelet's gRPC probes speak no TLS)."""
    from visionrpc.server.cli import main

    ca, _, _ = pki
    key_file = tmp_path / "key"
    key_file.write_text(INFERENCE_KEY + "\n")
    tls = ["--tls-ca-file", str(ca.cert), "--tls-server-name", "localhost"]
    cases = [
        (["--address", f"127.0.0.1:{tls_server.port}", *tls], 0),
        (["--address", f"127.0.0.1:{tls_server.port}"], 1),  # plaintext against TLS
        (["--address", keyed_server.address, "--api-key-file", str(key_file)], 0),
    ]
    for args, expected in cases:
        assert main(["health", "--timeout", "5", *args]) == expected, args
    models = main(["models", "list", "--address", keyed_server.address, "--api-key-file", str(key_file)])
    assert models == 0
    assert INFERENCE_KEY not in capsys.readouterr().out
