"""nginx as an L7 gRPC proxy in front of replicas (grpc_pass), on loopback, with an access log that names the
replica of every call: what a test counts calls per replica with.

Two upstreams, as docs/deploying.md configures them:
- unary calls round-robin over every replica; a replica that refuses connections (drained) is skipped and
  the call goes to the next (`grpc_next_upstream error`: nothing was sent yet, so any call may move);
- StreamPredictions hashes on the x-visionrpc-pipeline-key header (`hash ... consistent`), so identical
  subscriptions land on one replica and share its pipeline; when that replica goes, its keys move to the next
  on the ring and only those.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from conftest import wait_for
from streaming import free_port

__all__ = ["Call", "NginxProxy"]

_CONFIG = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log notice;
{user}
events {{ worker_connections 512; }}
http {{
    # One line per call: the replica(s) tried, in order, and what each answered.
    log_format calls '$msec $request_uri $status "$upstream_addr" "$upstream_status" '
                     '$sent_trailer_grpc_status "$http_x_visionrpc_pipeline_key"';
    access_log {dir}/access.log calls;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    client_max_body_size 16m;
    client_body_buffer_size 16m;  # request bodies stay in memory, so a call can be sent again elsewhere

    upstream replicas {{
{servers}
        keepalive 16;
    }}
    upstream pipelines {{
        hash $http_x_visionrpc_pipeline_key consistent;
{servers}
    }}
    server {{
        listen 127.0.0.1:{port} http2;
        location = /visionrpc.v1.InferenceService/StreamPredictions {{
            grpc_pass grpc://pipelines;
            grpc_read_timeout 1h;
            grpc_send_timeout 1h;
        }}
        location / {{
            grpc_pass grpc://replicas;
            # Infer has no side effects: a call may move to the next replica even once sent.
            grpc_next_upstream error timeout non_idempotent;
            grpc_next_upstream_tries 2;
        }}
    }}
}}
"""


@dataclass(frozen=True)
class Call:
    """One access-log line: a call as nginx proxied it."""

    finished_at: float  # time.time() of its end
    path: str
    http_status: int
    upstreams: tuple[str, ...]  # replicas tried, in order ("host:port")
    grpc_status: str  # the grpc-status trailer passed on ("" when nginx answered itself)
    pipeline_key: str

    @property
    def replica(self) -> str:
        """The replica that answered last."""
        return self.upstreams[-1] if self.upstreams else ""


class NginxProxy:
    def __init__(self, nginx: Path, workdir: Path, replicas: list[str]) -> None:
        self._nginx = nginx
        self._dir = workdir
        self.port = free_port()
        # Fail a replica for 10 s after one refused connection, so a drained one is skipped quickly.
        servers = "\n".join(f"        server {r} max_fails=1 fail_timeout=10s;" for r in replicas)
        user = (
            "user root;" if os.geteuid() == 0 else ""
        )  # workers must read this folder (pytest's tmp is 0700)
        self._dir.mkdir(parents=True, exist_ok=True)
        self.config = self._dir / "nginx.conf"
        self.config.write_text(_CONFIG.format(dir=self._dir, user=user, servers=servers, port=self.port))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        test = subprocess.run(
            [str(self._nginx), "-t", "-p", str(self._dir), "-c", str(self.config)],
            capture_output=True,
            text=True,
        )
        assert test.returncode == 0, test.stderr
        self._process = subprocess.Popen(
            [str(self._nginx), "-p", str(self._dir), "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        assert wait_for(lambda: (self._dir / "nginx.pid").exists(), 10), self.error_log()
        # The pid file can come before the listening socket accepts: wait for a connection to succeed.
        assert wait_for(lambda: _accepts(self.port), 10), self.error_log()

    def calls(self, path_suffix: str = "") -> list[Call]:
        """The calls finished so far (whose path ends with `path_suffix`)."""
        log = self._dir / "access.log"
        if not log.exists():
            return []
        calls = []
        for line in log.read_text().splitlines():
            finished, path, status, rest = line.split(" ", 3)
            upstreams, upstream_statuses, grpc_status, key = _quoted_fields(rest)
            del upstream_statuses
            if path.endswith(path_suffix):
                calls.append(
                    Call(
                        finished_at=float(finished),
                        path=path,
                        http_status=int(status),
                        upstreams=tuple(
                            u.strip() for u in upstreams.split(",") if u.strip() not in ("", "-")
                        ),
                        grpc_status="" if grpc_status == "-" else grpc_status,
                        pipeline_key="" if key == "-" else key,
                    )
                )
        return calls

    def error_log(self) -> str:
        path = self._dir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGQUIT)  # graceful: finish the log
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)

    def __enter__(self) -> NginxProxy:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()


def _quoted_fields(text: str) -> tuple[str, str, str, str]:
    """'"a, b" "502, 200" 0 "key"' -> ("a, b", "502, 200", "0", "key")."""
    upstreams, _, rest = text[1:].partition('" "')
    statuses, _, rest = rest.partition('" ')
    grpc_status, _, key = rest.partition(" ")
    return upstreams, statuses, grpc_status, key.strip('"')


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
