"""Fixtures shared by every suite: a real visionrpc server on an ephemeral loopback port, and the caches.

The model cache ($VISIONRPC_CACHE, default ~/.cache/visionrpc) is shared across runs so the built-in models
are downloaded from the package registry once per machine; every test server gets its own empty model
repository so tests never see each other's user models.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from media import media
from visionrpc.server.app import VisionRpcServer, create_server
from visionrpc.server.config import ServerConfig


def wait_for(condition: Callable[[], object], timeout_s: float = 10.0) -> bool:
    """Polls `condition` until it holds (True) or `timeout_s` passes (False); callers assert the result."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def cache_root() -> Path:
    return Path(os.environ.get("VISIONRPC_CACHE", Path.home() / ".cache" / "visionrpc"))


@dataclass(frozen=True)
class RunningServer:
    server: VisionRpcServer
    config: ServerConfig
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def start_server(config: ServerConfig) -> RunningServer:
    server, port = create_server(config)
    server.start()
    return RunningServer(server=server, config=config, port=port)


@pytest.fixture(scope="session")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The servers' media root, holding a copy of bikes.mp4 (a copy: symlinks out of the root are refused)."""
    root = tmp_path_factory.mktemp("media")
    shutil.copyfile(media("bikes.mp4"), root / "bikes.mp4")
    return root


@pytest.fixture(scope="session")
def base_config(tmp_path_factory: pytest.TempPathFactory, media_root: Path) -> ServerConfig:
    return ServerConfig(
        host="127.0.0.1",
        port=0,
        model_repository=tmp_path_factory.mktemp("models"),
        cache_dir=cache_root() / "downloads",
        intra_op_threads=2,
        shutdown_grace_s=2.0,
        media_root=media_root,
        allowed_url_hosts=("127.0.0.1", "localhost"),
        pipeline_linger_s=0.5,
        reconnect_initial_backoff_s=0.2,
        reconnect_max_backoff_s=1.0,
        source_open_timeout_s=3.0,
        source_read_timeout_s=3.0,
    )


@pytest.fixture(scope="session")
def server(base_config: ServerConfig) -> Iterator[RunningServer]:
    """One real server for the session, default model preloaded; tests must leave it serving."""
    running = start_server(base_config)
    running.server.wait_until_ready(timeout_s=300)
    yield running
    running.server.stop(grace_s=1.0)


@pytest.fixture
def fresh_server(base_config: ServerConfig, tmp_path: Path) -> Iterator[RunningServer]:
    """A private server for tests that change server state (unload, LRU, shutdown); no preload."""
    config = replace(base_config, model_repository=tmp_path / "models", preload_default_model=False)
    running = start_server(config)
    yield running
    running.server.stop(grace_s=0.5)
