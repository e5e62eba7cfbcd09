"""The server under test, in a process of its own (`python -m visionrpc.server.cli serve`), as in production.

Client and server never share a GIL. The same settings build the in-process baseline's `ServerConfig`
(`server_config`) and the server's flags (`server_flags`), so both load the model the same way; VISIONRPC_*
variables in the environment apply to both (the server inherits the environment; flags beat it, as always).
A server is given only the flags its `serve --help` lists (`accepted_flags`): another version of the server
(previous.py) may lack some, and the report says which were left out.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from visionrpc.server.config import ServerConfig

from . import procstat

__all__ = [
    "ServerProcess",
    "accepted_flags",
    "free_port",
    "server_config",
    "server_flags",
    "unaccepted_settings",
]

INFERENCE_SERVICE = "visionrpc.v1.InferenceService"


def server_config(settings: Mapping[str, Any]) -> ServerConfig:
    """The ServerConfig the server process ends up with: `settings` over VISIONRPC_* over defaults."""
    return ServerConfig.from_namespace(argparse.Namespace(**settings))


def _flag(name: str, value: object) -> str:
    dashed = name.replace("_", "-")
    return f"--no-{dashed}" if value is False else f"--{dashed}"


def server_flags(settings: Mapping[str, Any], accepted: Collection[str] | None = None) -> list[str]:
    """`settings` as `visionrpc serve` flags; with `accepted`, only those whose flag is in it."""
    flags: list[str] = []
    for name, value in settings.items():
        flag = _flag(name, value)
        if accepted is not None and flag not in accepted:
            continue
        if isinstance(value, bool):
            flags.append(flag)
        elif isinstance(value, tuple):
            flags += [flag, ",".join(str(v) for v in value)]
        else:
            flags += [flag, str(value)]
    return flags


def unaccepted_settings(settings: Mapping[str, Any], accepted: Collection[str]) -> list[str]:
    """The names in `settings` whose flag is not in `accepted` (`server_flags` leaves them out)."""
    return [name for name, value in settings.items() if _flag(name, value) not in accepted]


def accepted_flags(
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    command: Sequence[str] = ("visionrpc.server.cli", "serve"),
) -> frozenset[str]:
    """The long options `python -m <command> --help` lists, run with `env` in `cwd` (default: ours)."""
    done = subprocess.run(
        [sys.executable, "-m", *command, "--help"],
        env=os.environ if env is None else env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)} --help` exited with {done.returncode}:\n{done.stderr}")
    return frozenset(re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", done.stdout))


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None] | None:
    """Linux: the server gets SIGTERM if the benchmark dies (even by SIGKILL, as a test timeout does), so no
    server is ever left running. Loaded here, in the parent: the forked child only makes the call."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    return lambda: libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """Starts `visionrpc serve` on a free loopback port; `stop()` (or leaving the block) sends SIGTERM."""

    def __init__(
        self,
        settings: Mapping[str, Any],
        log_path: Path,
        *,
        command: Sequence[str] = ("visionrpc.server.cli", "serve"),
        extra: Sequence[str] = (),
        accepted: Collection[str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        """`python -m <command> --host 127.0.0.1 --port P <settings as flags> <extra>`: `visionrpc serve` by
        default; the transport floor's server takes the same flags. With `accepted`, settings whose flag is
        not in it are left out; `env` (default: ours) and `cwd` (default: ours) decide what it imports."""
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        argv = [sys.executable, "-m", *command, "--host", "127.0.0.1", "--port", str(self.port)]
        argv += [*server_flags(settings, accepted), *extra]
        self.argv = argv
        self._log = log_path.open("wb")
        self.started = time.perf_counter()  # just before exec: cold start is measured from here
        self._process = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=os.environ if env is None else env,
            cwd=cwd,
            preexec_fn=_die_with_parent(),
        )

    @property
    def pid(self) -> int:
        return self._process.pid

    def cpu_seconds(self) -> float:
        return procstat.cpu_seconds(self.pid)

    def rss_mb(self) -> float:
        return procstat.rss_bytes(self.pid) / (1024 * 1024)

    def wait_ready(self, timeout_s: float = 300.0, poll_s: float = 0.1) -> float:
        """Waits until the inference service is SERVING (default model loaded and warm), asking every
        `poll_s`; returns the seconds waited.

        Raises:
            RuntimeError: the process exited or did not get ready in time (with the end of its log).
        """
        start = time.perf_counter()
        deadline = start + timeout_s
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.perf_counter() < deadline:
                if self._process.poll() is not None:
                    raise RuntimeError(
                        f"the server exited with {self._process.returncode}:\n{self.log_tail()}"
                    )
                try:
                    response = stub.Check(
                        health_pb2.HealthCheckRequest(service=INFERENCE_SERVICE), timeout=1.0
                    )
                    if response.status == health_pb2.HealthCheckResponse.SERVING:
                        return time.perf_counter() - start
                except grpc.RpcError:
                    pass  # not listening yet
                time.sleep(poll_s)
        raise RuntimeError(f"the server was not SERVING within {timeout_s} s:\n{self.log_tail()}")

    def wait_listening(self, timeout_s: float = 60.0) -> None:
        """Waits until the port accepts gRPC connections (for servers without a health service)."""
        with grpc.insecure_channel(self.address) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=timeout_s)
            except grpc.FutureTimeoutError:
                raise RuntimeError(f"nothing listened on {self.address}:\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM (graceful shutdown), then SIGKILL after `timeout_s`; returns the exit status."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()
        return self._process.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
