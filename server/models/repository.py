"""The model repository on disk: `<root>/<name>/<version>/{manifest.json, model.onnx}`.

Model ids are `name` (newest version) or `name/version`. Ids come from the network, so they are validated
against a strict grammar and never joined to a path before that: no `..`, no separators, no absolute paths.
Built-in models live in their own repository inside the cache and are installed there on first use.

An install builds its version in a hidden `<name>/.install-*` folder and renames it into place
(importing.write_version_dir); a crash mid-install leaves that folder behind, so opening a repository removes
the ones older than `STALE_INSTALL_SECONDS` (younger ones may be another process's install in progress: a
replica sharing the volume).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import FailedPreconditionError, NotFoundError
from ..manifest import FileSignature, ModelManifest, ResolvedModel, file_signature
from .builtins import BUILTIN_MODELS, install_builtin, is_builtin
from .ids import NAME, VERSION, split_model_id

__all__ = ["STALE_INSTALL_SECONDS", "ModelId", "ModelRepository", "ResolvedModel", "remove_partial_installs"]

logger = logging.getLogger(__name__)

# An install takes seconds (yolov3-tiny: ~2 s to convert and write); a staging folder untouched for this long
# belongs to an install that died.
STALE_INSTALL_SECONDS = 600.0


@dataclass(frozen=True, slots=True)
class ModelId:
    name: str
    version: str | None = None

    @classmethod
    def parse(cls, text: str, *, field: str = "model_id") -> ModelId:
        """Parses "name" or "name/version"; anything else is INVALID_ARGUMENT naming `field` (ids.py)."""
        name, version = split_model_id(text, field=field)
        return cls(name, version)

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}/{self.version}"


class ModelRepository:
    """Looks models up in the user repository first, then among the built-ins (installed on demand)."""

    def __init__(self, user_root: Path, builtin_root: Path, download_dir: Path) -> None:
        self._user_root = user_root
        self._builtin_root = builtin_root
        self._download_dir = download_dir
        self._versions: dict[Path, tuple[FileSignature, tuple[str, ...]]] = {}
        for root in (user_root, builtin_root):
            remove_partial_installs(root)

    def names(self) -> list[str]:
        """Every model name: user models, then built-ins (whether installed yet or not)."""
        user = [n for n in self._user_names() if n not in BUILTIN_MODELS]
        return sorted(user) + sorted(BUILTIN_MODELS)

    def versions(self, name: str) -> list[str]:
        """Versions on disk, oldest first (a built-in not installed yet reports none).

        Listed once per change of the model's directory (adding, removing or renaming a version changes its
        signature), so resolving a model per request costs one stat here, not a directory scan.
        """
        return self._versions_in(self._root_for(name) / name)

    def _versions_in(self, directory: Path) -> list[str]:
        try:
            signature = file_signature(directory)
        except OSError:
            return []
        cached = self._versions.get(directory)
        if cached is not None and cached[0] == signature:
            return list(cached[1])
        if not directory.is_dir():
            return []
        found = [p.name for p in directory.iterdir() if p.is_dir() and VERSION.fullmatch(p.name)]
        versions = sorted(found, key=int)
        if signature.settled():
            self._versions[directory] = (signature, tuple(versions))
        return versions

    def is_builtin(self, name: str) -> bool:
        return self._root_for(name) == self._builtin_root

    def resolve(self, model_id: ModelId, *, install: bool = True) -> ResolvedModel:
        """Finds the model version on disk, installing a built-in first if `install` allows.

        Raises:
            NotFoundError: no such model or version.
            FailedPreconditionError: the version's manifest is unreadable (reported with its path), or
                a built-in cannot be installed (no cache, no registry).
        """
        # Every request resolves its model: the root is looked up once (each lookup is a stat).
        root = self._root_for(model_id.name)
        builtin = root == self._builtin_root
        if builtin and install:
            install_builtin(model_id.name, self._builtin_root, self._download_dir)
        versions = self._versions_in(root / model_id.name)
        if not versions:
            raise NotFoundError(
                f"model {model_id.name!r} not found; known models: {', '.join(self.names()) or 'none'}",
                reason="MODEL_NOT_FOUND",
                metadata={"model_id": str(model_id)},
            )
        version = model_id.version or versions[-1]
        if version not in versions:
            raise NotFoundError(
                f"model {model_id.name!r} has no version {version}; versions: {', '.join(versions)}",
                reason="MODEL_VERSION_NOT_FOUND",
                metadata={"model_id": str(model_id)},
            )
        directory = root / model_id.name / version
        try:
            manifest = ModelManifest.read(directory)
        except ValueError as exc:
            raise FailedPreconditionError(
                f"model {model_id.name}/{version} has an invalid manifest: {exc}",
                reason="INVALID_MANIFEST",
                metadata={"model_id": f"{model_id.name}/{version}"},
            ) from exc
        return ResolvedModel(model_id.name, version, directory, manifest, builtin)

    def _root_for(self, name: str) -> Path:
        # A user model of the same name shadows a built-in: users can pin their own copy.
        if (self._user_root / name).is_dir() or not is_builtin(name):
            return self._user_root
        return self._builtin_root

    def _user_names(self) -> list[str]:
        if not self._user_root.is_dir():
            return []
        return [p.name for p in self._user_root.iterdir() if p.is_dir() and NAME.fullmatch(p.name)]


def remove_partial_installs(root: Path, *, older_than: float = STALE_INSTALL_SECONDS) -> list[Path]:
    """Removes `<root>/<name>/.install-*` staging folders untouched for `older_than` seconds.

    Returns the folders removed. Errors (a folder vanishing meanwhile, permissions) are logged, never raised:
    a leftover must not keep a server from starting.
    """
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    now = time.time()
    for staging in root.glob("*/.install-*"):
        try:
            if not staging.is_dir() or staging.is_symlink() or now - staging.stat().st_mtime < older_than:
                continue
            shutil.rmtree(staging)
        except OSError as exc:
            logger.warning("could not remove the partial install %s: %s", staging, exc)
            continue
        logger.warning("removed %s, left by an install that did not finish", staging)
        removed.append(staging)
    return removed
