"""The real tools of the mesh and deploy tests, built from the Go module proxy into .tools/bin by
`scripts/test-deploy --tools` (once per machine; later calls find them there): helm, grpc_health_probe,
grpcurl, and our own Go programs (the chart validator, the xDS test programs). nginx comes from Debian
(scripts/install-test-deps)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ROOT", "Tools", "build_tools"]

ROOT = Path(__file__).resolve().parents[2]
_NGINX_HINT = "nginx is not installed: run scripts/install-test-deps (Debian package nginx)"


@dataclass(frozen=True)
class Tools:
    helm: Path
    validate_chart: Path  # deploy/validate: strict decoding into the Kubernetes API types
    health_probe: Path
    grpcurl: Path
    xds: Path  # tests/mesh/xds: the xDS management server and the proxyless grpc-go client
    nginx: Path


def build_tools() -> Tools:
    """Builds (or finds) every tool; fails with the install hint when nginx is missing (CI installs it)."""
    subprocess.run([str(ROOT / "scripts/test-deploy"), "--tools"], check=True)
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    assert nginx is not None, _NGINX_HINT
    bin_dir = ROOT / ".tools/bin"
    return Tools(
        helm=bin_dir / "helm",
        validate_chart=bin_dir / "validate-chart",
        health_probe=bin_dir / "grpc-health-probe",
        grpcurl=bin_dir / "grpcurl",
        xds=bin_dir / "xds-mesh",
        nginx=Path(nginx),
    )
