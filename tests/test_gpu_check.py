"""scripts/gpu-check on a machine without an NVIDIA GPU (this one): it says so clearly and exits 0.

Each case runs the real script. Two cases put a stand-in `nvidia-smi` first on PATH, because the situations
they stand for (the tool installed but the driver not loaded, or a driver that lists no GPU) cannot be
produced here otherwise; the stand-ins print what the real tool prints then. For the same reason the CUDA
checks (step 2) are run against a stand-in of cuda-python's runtime module whose "device" memory is host
memory: that checks the script's own logic (what it copies where, what it compares, how it reports), not
CUDA, which only a GPU machine can.
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


def run(
    args: list[str], nvidia_smi: str | None, tmp_path: Path, *, cuda_stand_in: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if cuda_stand_in is not None:
        env["PYTHONPATH"] = f"{cuda_stand_in}:{env.get('PYTHONPATH', '')}"
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


# cuda-python's runtime module as engines/_cuda.py calls it: every call returns (error, *values); pointers
# are integers. "Device" allocations are host buffers and copies are memmoves, unless BROKEN names a copy
# kind that silently copies nothing (a GPU losing data).
CUDA_STAND_IN = """
import ctypes, enum, types
BROKEN = {broken!r}
_buffers = {{}}
def _alloc(n):
    buffer = ctypes.create_string_buffer(n)
    _buffers[ctypes.addressof(buffer)] = buffer
    return ctypes.addressof(buffer)
cudaStreamNonBlocking, cudaHostAllocMapped = 1, 2
class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3
def cudaGetDeviceCount(): return (0, 1)
def cudaGetDeviceProperties(i):
    props = dict(name=b"Stand-in GPU\\0", major=9, minor=0, integrated=0, canMapHostMemory=1)
    return (0, types.SimpleNamespace(**props))
def cudaGetErrorString(error): return (0, b"stand-in error")
def cudaRuntimeGetVersion(): return (0, 12080)
def cudaStreamCreateWithFlags(flags): return (0, 7)
def cudaStreamSynchronize(stream): return (0,)
def cudaStreamDestroy(stream): return (0,)
def cudaDeviceSynchronize(): return (0,)
def cudaHostAlloc(n, flags): return (0, _alloc(n))
def cudaHostGetDevicePointer(pointer, flags): return (0, pointer)
def cudaMallocHost(n): return (0, _alloc(n))
def cudaMalloc(n): return (0, _alloc(n))
def cudaFree(pointer): _buffers.pop(pointer); return (0,)
def cudaFreeHost(pointer): _buffers.pop(pointer); return (0,)
def cudaMemcpyAsync(destination, source, n, kind, stream):
    if kind.name != BROKEN:
        ctypes.memmove(int(destination), int(source), n)
    return (0,)
"""


def cuda_stand_in(tmp_path: Path, broken: str | None) -> Path:
    package = tmp_path / "stand-in" / "cuda" / "bindings"
    package.mkdir(parents=True)
    for folder in (package.parent, package):
        (folder / "__init__.py").write_text("")
    (package / "runtime.py").write_text(CUDA_STAND_IN.format(broken=broken))
    return tmp_path / "stand-in"


@pytest.mark.skipif(HAS_GPU, reason="this machine has an NVIDIA GPU: run the script itself")
@pytest.mark.parametrize(
    ("broken", "code", "failed"),
    [
        pytest.param(None, 0, [], id="every-copy-arrives"),
        pytest.param(
            "cudaMemcpyDeviceToHost", 1,
            ["pinned + device buffers", "mapped pinned memory", "two streams"],
            id="device-to-host-copies-lost",
        ),
        pytest.param("cudaMemcpyDeviceToDevice", 1, ["mapped pinned memory"], id="device-copies-lost"),
    ],
)  # fmt: skip
def test_cuda_checks_against_a_stand_in_runtime(
    tmp_path: Path, broken: str | None, code: int, failed: list[str]
) -> None:
    result = run(["--force", "--no-tests"], None, tmp_path, cuda_stand_in=cuda_stand_in(tmp_path, broken))

    assert result.returncode == code, result.stdout + result.stderr
    assert "device 0: Stand-in GPU, compute capability 9.0" in result.stdout
    assert "CUDA runtime 12.8" in result.stdout
    assert "ok    CUDA errors become EngineError" in result.stdout
    failures = [line.split("FAIL  ", 1)[1] for line in result.stdout.splitlines() if "FAIL  " in line]
    assert len(failures) == len(failed), failures
    for failure, name in zip(failures, failed, strict=True):
        assert failure.startswith(name)
    assert result.stdout.rstrip().endswith("all checks passed" if code == 0 else "FAILED (see above)")
    assert "== 3." not in result.stdout  # --no-tests
