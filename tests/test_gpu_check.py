"""scripts/gpu-check on a machine without an NVIDIA GPU (this one): it says so clearly and exits 0.

Each case runs the real script. Two cases put a stand-in `nvidia-smi` first on PATH, because the situations
they stand for (the tool installed but the driver not loaded, or a driver that lists no GPU) cannot be
produced here otherwise; the stand-ins print what the real tool prints then.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu-check"
HAS_GPU = bool(glob.glob("/dev/nvidia[0-9]*")) or shutil.which("nvidia-smi") is not None

NO_DRIVER = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running."
)


def run(args: list[str], nvidia_smi: str | None, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if nvidia_smi is not None:
        stand_in = tmp_path / "nvidia-smi"
        stand_in.write_text(f"#!/bin/sh\n{nvidia_smi}\n")
        stand_in.chmod(0o755)
        env["PATH"] = f"{tmp_path}:{env['PATH']}"
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


@pytest.mark.skipif(HAS_GPU, reason="this machine has an NVIDIA GPU: the no-GPU report cannot be seen")
@pytest.mark.parametrize(
    ("args", "nvidia_smi", "code", "report"),
    [
        pytest.param(
            [], None, 0, "no NVIDIA GPU present (nvidia-smi is not installed and there is no /dev/nvidia0)",
            id="nothing-installed",
        ),
        pytest.param(
            [], f'echo "{NO_DRIVER}"; exit 9', 0,
            "no NVIDIA GPU present (nvidia-smi failed: NVIDIA-SMI has failed because it couldn't",
            id="driver-not-loaded",
        ),
        pytest.param(
            [], "echo 'No devices were found'", 0, "no NVIDIA GPU present (nvidia-smi lists no GPU)",
            id="no-device-listed",
        ),
        pytest.param(
            ["--no-tests"], None, 0, "no NVIDIA GPU present (nvidia-smi is not installed", id="no-tests"
        ),
        pytest.param(
            ["--require-gpu"], None, 3, "gpu-check: FAILED: --require-gpu was given", id="gpu-required"
        ),
    ],
)  # fmt: skip
def test_reports_that_no_gpu_is_present(
    args: list[str], nvidia_smi: str | None, code: int, report: str, tmp_path: Path
) -> None:
    result = run(args, nvidia_smi, tmp_path)

    assert result.returncode == code, result.stdout + result.stderr
    assert report in result.stdout + result.stderr
    assert "nothing was checked" in result.stdout
    assert "== 2." not in result.stdout  # no check ran


@pytest.mark.parametrize(
    ("args", "code", "output"),
    [
        pytest.param(["--help"], 0, "Exit status: 0 every check passed", id="help"),
        pytest.param(["--bogus"], 2, "unknown argument '--bogus'", id="unknown-argument"),
    ],
)
def test_usage(args: list[str], code: int, output: str, tmp_path: Path) -> None:
    result = run(args, None, tmp_path)

    assert result.returncode == code
    assert output in result.stdout + result.stderr


@pytest.mark.skipif(HAS_GPU, reason="this machine has an NVIDIA GPU: nothing is forced")
def test_force_runs_the_checks_and_lists_why_each_gpu_test_skips(tmp_path: Path) -> None:
    """--force goes on without a GPU: the CUDA checks fail (exit 1) and every gpu test is listed as skipped
    with its reason, none as passed or failed."""
    result = run(["--force"], None, tmp_path)

    assert result.returncode == 1
    assert "FAIL  cuda-python cannot use the GPU" in result.stdout
    assert "passed (0):" in result.stdout and "failed (0):" in result.stdout
    skipped = result.stdout.split("skipped (", 1)[1]
    assert int(skipped.split(")", 1)[0]) >= 3
    assert "test_pinned_and_device_buffers_round_trip_through_a_stream: needs cuda-python" in skipped
    assert "needs TensorRT" in skipped
    assert result.stdout.rstrip().endswith("gpu-check: FAILED (see above)")
