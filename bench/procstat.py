"""What a process costs: CPU seconds and resident memory (Linux /proc; psutil elsewhere, if installed)."""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["NoiseMeter", "cpu_seconds", "machine_info", "precise_cpu_seconds", "quiesce", "rss_bytes"]

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far, all its threads (10 ms resolution on Linux)."""
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        # Fields after the command name, which is in parentheses and may contain spaces.
        fields = stat.read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime: fields 14 and 15 of stat(5)
    times = _psutil_process(pid).cpu_times()
    return float(times.user + times.system)


def precise_cpu_seconds(pid: int) -> float:
    """Like cpu_seconds, from the per-thread scheduler statistics (nanoseconds) where Linux has them."""
    try:
        total = 0
        for task in Path(f"/proc/{pid}/task").iterdir():
            with suppress(OSError):  # a thread that just ended
                total += int((task / "schedstat").read_text().split()[0])
        return total / 1e9
    except OSError:
        return cpu_seconds(pid)


def quiesce(*pids: int, step_s: float = 0.002, idle_share: float = 0.1, limit_s: float = 0.5) -> float:
    """Waits until this process and processes `pids` together use under `idle_share` of a core over
    `step_s` (ONNX Runtime's pool threads, for one, spin for tens of ms after a run by default); returns the
    wait. Gives up after `limit_s`."""
    start = time.perf_counter()
    while True:
        # Our own clock is read inside the others', so reading /proc is not counted as our work.
        servers = sum(precise_cpu_seconds(pid) for pid in pids)
        own = time.process_time()
        time.sleep(step_s)
        used = (time.process_time() - own) + (sum(precise_cpu_seconds(pid) for pid in pids) - servers)
        waited = time.perf_counter() - start
        if used < idle_share * step_s or waited >= limit_s:
            return waited


def rss_bytes(pid: int) -> int:
    """Resident set size of process `pid`."""
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise OSError(f"no VmRSS in {status}")
    return int(_psutil_process(pid).memory_info().rss)


def _machine_busy_seconds() -> float | None:
    """CPU seconds every process on the machine has used since boot (None without /proc/stat)."""
    stat = Path("/proc/stat")
    if not stat.exists():
        return None
    fields = stat.read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICKS


def _reaped_cpu_seconds() -> float:
    """This process's CPU seconds plus its reaped children's (the server, once stopped)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


@dataclass(frozen=True, slots=True)
class _Snapshot:
    machine: float | None
    own: float
    elapsed: float


class NoiseMeter:
    """How much CPU other processes took while the benchmark ran, per phase and overall: on a small machine
    any of it shows in the numbers. Add each server's pid to `server_pids` while it runs, so its CPU counts
    as our own (once stopped and reaped, it is counted among our children)."""

    def __init__(self) -> None:
        self.server_pids: set[int] = set()
        self.phases: dict[str, float] = {}  # phase -> other processes' share of the machine's CPU
        self._start = self._snapshot()
        self._load = _loadavg()

    def _snapshot(self) -> _Snapshot:
        own = _reaped_cpu_seconds()
        for pid in self.server_pids:
            with suppress(OSError, RuntimeError):  # exited: once reaped, it is counted above
                own += cpu_seconds(pid)
        return _Snapshot(_machine_busy_seconds(), own, time.perf_counter())

    def _share(self, start: _Snapshot, end: _Snapshot) -> float | None:
        if start.machine is None or end.machine is None:
            return None
        others = max(0.0, (end.machine - start.machine) - (end.own - start.own))
        return others / (max(end.elapsed - start.elapsed, 1e-9) * (os.cpu_count() or 1))

    @contextmanager
    def phase(self, label: str) -> Iterator[None]:
        start = self._snapshot()
        yield
        share = self._share(start, self._snapshot())
        if share is not None:
            self.phases[label] = round(share, 3)

    def report(self) -> dict[str, Any]:
        end = self._snapshot()
        share = self._share(self._start, end)
        out: dict[str, Any] = {"load_average_at_start": self._load, "load_average_at_end": _loadavg()}
        if share is not None:
            out["other_processes_share_of_machine"] = round(share, 3)
            out["other_processes_share_by_phase"] = dict(self.phases)
        return out


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _psutil_process(pid: int) -> Any:
    try:
        import psutil  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        raise RuntimeError("reading another process's CPU and memory needs /proc (Linux) or psutil") from None
    return psutil.Process(pid)


def machine_info() -> dict[str, Any]:
    """CPU model, cores, OS, and the versions that decide the numbers."""
    from visionrpc.engines.onnxruntime_engine import available_cores

    return {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": available_cores(),
        "memory_gb": _memory_gb(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "grpcio": _version("grpcio"),
        "protobuf": _version("protobuf"),
        "numpy": _version("numpy"),
        "opencv": _version("opencv-python-headless") or _version("opencv-python"),
    }


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return ""


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory_gb() -> float:
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return 0.0
