"""Fixtures of the pipeline and stream-manager suites: a real model manager on the cached built-in
yolov3-tiny-coco, and a private media root holding the real bikes.mp4 (640x272, 25 fps, 250 frames)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import cache_root
from media import media
from visionrpc.server.app import OnnxRuntimeEngineFactory
from visionrpc.server.config import ServerConfig
from visionrpc.server.domain import InferOptions
from visionrpc.server.models.manager import ModelManager
from visionrpc.server.models.repository import ModelId, ModelRepository
from visionrpc.server.processing import DecodeOptions
from visionrpc.server.streams.manager import StreamManager
from visionrpc.server.streams.source_policy import SourcePolicy, resolve_source
from visionrpc.server.streams.types import SourceSpec

MODEL = "yolov3-tiny-coco"


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelManager]:
    repository = ModelRepository(
        tmp_path_factory.mktemp("stream-models"),
        cache_root() / "downloads" / "builtin-models",
        cache_root() / "downloads",
    )
    manager = ModelManager(repository, OnnxRuntimeEngineFactory(("cpu",), 2), max_loaded=2)
    yield manager
    manager.close()


@pytest.fixture(scope="session")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("media")
    # A copy, not a link: sources resolve links and refuse ones that lead outside the media root.
    shutil.copyfile(media("bikes.mp4"), root / "bikes.mp4")
    (root / "broken.mp4").write_bytes(b"not a video at all" * 100)
    return root


@pytest.fixture(scope="session")
def source_policy(media_root: Path) -> SourcePolicy:
    return SourcePolicy(media_root, allowed_url_schemes=(), allowed_url_hosts=(), enable_devices=False)


@pytest.fixture(scope="session")
def bikes(source_policy: SourcePolicy) -> SourceSpec:
    return resolve_source(0, path="bikes.mp4", policy=source_policy)


@pytest.fixture(scope="session")
def decode_options(models: ModelManager) -> DecodeOptions:
    with models.acquire(ModelId.parse(MODEL)) as predictor:
        return predictor.resolve_options(InferOptions())


@pytest.fixture
def streams(models: ModelManager, config: ServerConfig) -> Iterator[StreamManager]:
    """A stream manager over the session's models, with the `config` fixture of the test module."""
    manager = StreamManager(models, config)
    yield manager
    manager.close()
