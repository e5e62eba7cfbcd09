"""The Helm chart against the server it deploys: every variant's rendered container arguments parse with the
server's own command line into a valid ServerConfig (so a renamed or removed flag fails here, not in a
cluster), and the pod outlasts the drain the server was configured with. scripts/test-deploy checks the
rendered objects against the Kubernetes API types; this checks them against visionrpc."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from mesh.tools import ROOT, Tools, build_tools
from visionrpc.server.cli import build_parser
from visionrpc.server.config import ServerConfig

CHART = ROOT / "deploy/helm/visionrpc"
# variant -> (values file, what its server config must say)
VARIANTS: dict[str, tuple[str | None, dict[str, object]]] = {
    "default": (None, {"port": 50051, "host": "0.0.0.0", "shutdown_notice_s": 5.0, "tls_cert_file": ""}),
    "gpu": ("gpu-values.yaml", {"engine": "auto", "engine_cache_dir": "/var/cache/visionrpc/engines"}),
    "tls": (
        "tls-values.yaml",
        {
            "tls_cert_file": "/etc/visionrpc/tls/tls.crt",
            "tls_client_ca_file": "/etc/visionrpc/client-ca/ca.crt",
            "api_keys_file": "/etc/visionrpc/auth/api/api-keys",
            "admin_keys_file": "/etc/visionrpc/auth/admin/admin-keys",
        },
    ),
    "all-on": ("all-on-values.yaml", {"metrics_port": 9090, "log_format": "json", "max_pipelines": 8}),
}


@pytest.fixture(scope="module")
def tools() -> Tools:
    return build_tools()


def render(tools: Tools, values: str | None, workdir: Path) -> list[dict[str, Any]]:
    """The chart's objects as the Kubernetes API types decode them (deploy/validate's JSON)."""
    flags = ["--values", str(CHART / "ci" / values)] if values else []
    rendered = subprocess.run(
        [str(tools.helm), "template", "visionrpc", str(CHART), *flags],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    dump = workdir / "objects.json"
    subprocess.run([str(tools.validate_chart), "-json", str(dump)], input=rendered, text=True, check=True)
    objects: list[dict[str, Any]] = json.loads(dump.read_text())
    return objects


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_rendered_arguments_are_a_valid_server_config(tools: Tools, variant: str, tmp_path: Path) -> None:
    values, expected = VARIANTS[variant]
    spec = pod_spec(render(tools, values, tmp_path))
    (container,) = spec["containers"]
    # The image's entrypoint is `visionrpc serve`; the chart gives its arguments. Environment left out: only
    # what the chart says counts.
    config = ServerConfig.from_namespace(build_parser().parse_args(["serve", *container["args"]]), environ={})
    assert {name: getattr(config, name) for name in expected} == expected
    assert spec["terminationGracePeriodSeconds"] > config.shutdown_notice_s + config.shutdown_grace_s
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["grpc"] == config.port
    if config.metrics_port:
        assert ports["metrics"] == config.metrics_port


@pytest.mark.parametrize(
    ("setting", "refusal"),
    [
        ("gpu.enabeld=true", "additional properties 'enabeld' not allowed"),  # values.schema.json
        ("drain.graceSeconds=abc", "got string, want number"),
        ("probes.mode=http", "value must be one of"),
        ("tls.enabled=true", "tls.enabled needs tls.secretName"),  # the templates' own checks
        ("tls.clientCA.enabled=true", "tls.clientCA.enabled (mTLS) needs tls.enabled"),
        ("auth.enabled=true", "auth.enabled needs auth.apiKeys.secretName"),
    ],
)
def test_mistaken_values_are_refused(tools: Tools, setting: str, refusal: str) -> None:
    rendered = subprocess.run(
        [str(tools.helm), "template", "visionrpc", str(CHART), "--set", setting],
        capture_output=True,
        text=True,
    )
    assert rendered.returncode != 0 and refusal in rendered.stderr, rendered.stderr


def test_the_tls_probe_command_parses(tools: Tools, tmp_path: Path) -> None:
    (container,) = pod_spec(render(tools, "tls-values.yaml", tmp_path))["containers"]
    command = container["readinessProbe"]["exec"]["command"]
    assert command[:2] == ["visionrpc", "health"]
    try:
        build_parser().parse_args(command[1:])
    except SystemExit as refused:  # argparse's way of refusing an unknown flag
        pytest.fail(f"visionrpc health refuses the probe's arguments (exit {refused.code})")
