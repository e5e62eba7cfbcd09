"""Fixtures for the engine selection and build suites: a user repository of real yolov3-tiny copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import cache_root
from visionrpc.server.models.repository import ModelId, ModelRepository


def builtin_models() -> Path:
    return cache_root() / "downloads" / "builtin-models"


@pytest.fixture
def yolo_repo(tmp_path: Path) -> Path:
    """`<tmp>/models` holding alpha/1 and beta/1: copies of the built-in yolov3-tiny-coco (real weights)."""
    repository = ModelRepository(tmp_path / "unused", builtin_models(), cache_root() / "downloads")
    source = repository.resolve(ModelId("yolov3-tiny-coco")).directory
    root = tmp_path / "models"
    for name in ("alpha", "beta"):
        shutil.copytree(source, root / name / "1")
    return root
