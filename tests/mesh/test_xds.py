"""Proxyless gRPC: a real xDS management server (envoyproxy/go-control-plane) hands two `visionrpc serve`
replicas to a grpc-go client that dials xds:///visionrpc (tests/mesh/xds), as a mesh's control plane would.
The client balances its Infer calls over both (each call's peer names its replica), then follows an endpoint
removal: once the control plane drops a replica, calls go to the other only."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections import Counter
from pathlib import Path

import pytest
from conftest import wait_for
from media import media
from mesh.conftest import StartReplicas, report
from mesh.tools import Tools


class Lines:
    """A process's stdout, one line at a time, collected by a thread as the lines arrive."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:  # closed at the end of the output
            for line in self.process.stdout:
                self.lines.append(line.rstrip("\n"))

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def close(self, timeout_s: float = 30) -> int:
        """Closes stdin (the programs' signal to stop) and waits for the exit code."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise
        finally:
            self._reader.join(10)  # the reader closes stdout once the output ends


def start(command: list[str], env: dict[str, str] | None = None) -> Lines:
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )
    return Lines(process)


@pytest.mark.slow
def test_a_proxyless_client_balances_and_follows_a_removal(
    tools: Tools, start_replicas: StartReplicas, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kept, removed = start_replicas(2)
    control_plane = start([str(tools.xds), "server", "-node", "visionrpc-test"])
    client: Lines | None = None
    try:
        assert wait_for(lambda: bool(control_plane.lines), 30), "the xDS server did not start"
        xds_port = int(control_plane.lines[0].removeprefix("listening "))
        bootstrap = tmp_path / "bootstrap.json"
        bootstrap.write_text(
            json.dumps(
                {
                    "xds_servers": [
                        {
                            "server_uri": f"127.0.0.1:{xds_port}",
                            "channel_creds": [{"type": "insecure"}],
                            "server_features": ["xds_v3"],
                        }
                    ],
                    "node": {"id": "visionrpc-test", "locality": {"region": "loopback"}},
                }
            )
        )
        control_plane.send(f"endpoints {kept.address},{removed.address}")
        assert wait_for(lambda: "pushed 1" in control_plane.lines, 10), control_plane.lines

        client = start(
            [str(tools.xds), "client", "-image", str(media("coffee.png"))],
            {"GRPC_XDS_BOOTSTRAP": str(bootstrap)},
        )

        def calls() -> list[dict[str, str]]:
            assert client is not None
            return [json.loads(line) for line in list(client.lines)]

        def per_replica(subset: list[dict[str, str]]) -> Counter[str]:
            return Counter(call["replica"] for call in subset)

        assert wait_for(lambda: min(per_replica(calls())[r.address] for r in (kept, removed)) >= 10, 90), (
            per_replica(calls())
        )
        before = calls()

        control_plane.send(f"endpoints {kept.address}")
        assert wait_for(lambda: "pushed 2" in control_plane.lines, 10), control_plane.lines
        pushed_at = len(calls())
        # Followed: the last 20 calls all went to the kept replica.
        assert wait_for(
            lambda: len(calls()) >= pushed_at + 20 and set(per_replica(calls()[-20:])) == {kept.address}, 60
        ), per_replica(calls()[pushed_at:])
        assert client.close() == 0
        after = calls()[pushed_at:]
        to_removed = per_replica(after)[removed.address]
        report(
            capsys,
            f"xDS proxyless: {len(before)} calls over both replicas {dict(per_replica(before))}; after the "
            f"removal of {removed.address}: {dict(per_replica(after))} ({to_removed} still in flight to it); "
            f"calls lost: {sum(call['code'] != 'OK' for call in calls())}",
        )
        assert all(call["code"] == "OK" for call in calls())
        # Followed at once: at most a couple of calls were already on their way to the removed replica.
        assert to_removed <= 3
    finally:
        if client is not None and client.process.poll() is None:
            client.close()
        control_plane.close()
