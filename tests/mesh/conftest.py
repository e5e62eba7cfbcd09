"""Fixtures of the mesh tests: the real tools, and replicas (`visionrpc serve` processes) to put behind a
proxy or an xDS control plane."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mesh.tools import Tools, build_tools
from server_process import ServerProcess

# Drain quickly but observably: health NOT_SERVING for 3 s while calls are still taken, then 5 s of grace.
DRAIN_FLAGS = ("--shutdown-notice-s", "3", "--shutdown-grace-s", "5")

StartReplicas = Callable[[int], list[ServerProcess]]


@pytest.fixture(scope="session")
def tools() -> Tools:
    return build_tools()


@pytest.fixture
def start_replicas(tmp_path: Path, media_root: Path) -> Iterator[StartReplicas]:
    """Starts N replicas one after the other (each ready: default model warm); all stopped at the end."""
    started: list[ServerProcess] = []

    def start(count: int) -> list[ServerProcess]:
        replicas = []
        for _ in range(count):
            workdir = tmp_path / f"replica-{len(started)}"
            workdir.mkdir()
            replica = ServerProcess(workdir, "--media-root", str(media_root), *DRAIN_FLAGS)
            started.append(replica)
            replica.start()
            replicas.append(replica)
        return replicas

    yield start
    for replica in started:
        replica.stop()


def report(capsys: pytest.CaptureFixture[str], text: str) -> None:
    """Prints a test's figures to the terminal, past pytest's capture, so CI's log shows them."""
    with capsys.disabled():
        print(f"\n  {text}")
