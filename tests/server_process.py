"""A real visionrpc server in a process of its own, for tests that measure it from outside: its memory (RSS
and peak RSS), threads, file descriptors and log, or that pause it with SIGSTOP.

Example:
    with ServerProcess(tmp_path, "--max-request-pixels", "1000000") as server:
        stub = InferenceServiceStub(grpc.insecure_channel(server.address))
        print(server.usage())
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc
from conftest import cache_root, wait_for
from grpc_health.v1 import health_pb2, health_pb2_grpc
from streaming import free_port

__all__ = ["ServerProcess", "Usage"]


@dataclass(frozen=True)
class Usage:
    """What the process holds at one moment (from /proc)."""

    rss_mb: float
    peak_rss_mb: float
    threads: int
    fds: int


class ServerProcess:
    def __init__(
        self, workdir: Path, *flags: str, ready_service: str = "visionrpc.v1.InferenceService"
    ) -> None:
        self.port = free_port()
        self.log_path = workdir / f"server-{self.port}.log"
        self._command = [
            sys.executable, "-m", "visionrpc.server.cli", "serve", "--port", str(self.port),
            "--model-repository", str(workdir / "models"), "--cache-dir", str(cache_root() / "downloads"),
            "--intra-op-threads", "2", "--shutdown-grace-s", "2", *flags,
        ]  # fmt: skip
        self._ready_service = ready_service
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def start(self, timeout_s: float = 180.0) -> None:
        with open(self.log_path, "ab") as out:
            self._process = subprocess.Popen(self._command, stdout=out, stderr=subprocess.STDOUT)
        assert wait_for(lambda: self.serving() or not self.alive(), timeout_s) and self.alive(), self.log()

    def serving(self) -> bool:
        try:
            with grpc.insecure_channel(self.address) as channel:
                request = health_pb2.HealthCheckRequest(service=self._ready_service)
                status = health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status
        except grpc.RpcError:
            return False
        return status == health_pb2.HealthCheckResponse.SERVING

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def usage(self) -> Usage:
        fields: dict[str, float] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM", "Threads"):
                fields[name] = float(value.split()[0])
        return Usage(
            rss_mb=fields["VmRSS"] / 1024,
            peak_rss_mb=fields["VmHWM"] / 1024,
            threads=int(fields["Threads"]),
            fds=len(os.listdir(f"/proc/{self.pid}/fd")),
        )

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int | None:
        if self._process is None:
            return None
        if self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGCONT)  # a paused process cannot act on SIGTERM
            self._process.terminate()
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        return self._process.returncode

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()
