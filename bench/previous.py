"""The previous server: a git ref served from a temporary worktree, so that `--baseline-ref REF` measures the
current server against an earlier one in the same run (compare.py).

`git worktree add --detach` checks REF out into the run's temporary folder; the worktree is removed
afterwards (`git worktree remove --force`, which also drops its entry under .git/worktrees). REF's server
runs from that tree without being installed: a folder holding a `visionrpc/` made of symlinks to REF's role
folders, laid out from REF's own pyproject.toml `package-dir` (`visionrpc.server` -> `server/`, ...), goes
first on PYTHONPATH, and the server starts in that folder. Python's path finder comes before the editable
install's finder, so `visionrpc.*` resolves to REF's code, and REF's server runs in the same virtual
environment (dependencies, ONNX Runtime, grpcio) as the current one.

That is checked, not assumed, on the server process itself: it runs with PYTHONPYCACHEPREFIX set to a folder
of its own, so every module it imports leaves a .pyc named after its source path there. `verify_imports`
reads them back: the run fails if a `visionrpc` module came from anywhere but the worktree, and the report
lists where they came from (plus `visionrpc.server.__path__` from a probe with the same environment).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PreviousTree", "checkout", "resolve_ref"]

logger = logging.getLogger(__name__)

# setuptools' package-dir of the layout at the time of writing, for a tree whose pyproject.toml has none.
_DEFAULT_PACKAGE_DIR = {
    "visionrpc.server": "server",
    "visionrpc.engines": "engines",
    "visionrpc.client": "clients/python",
    "visionrpc.v1": "clients/python/gen/visionrpc/v1",
}
_PROBE = (
    "import json, visionrpc.server, visionrpc.server.cli, visionrpc.engines, visionrpc.v1; "
    "print(json.dumps({'visionrpc.server.__path__': list(visionrpc.server.__path__), "
    "'visionrpc.server.cli.__file__': visionrpc.server.cli.__file__, "
    "'visionrpc.engines.__path__': list(visionrpc.engines.__path__), "
    "'visionrpc.v1.__path__': list(visionrpc.v1.__path__)}))"
)


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip()


def repository_root(inside: Path) -> Path:
    """The top of the git checkout that holds `inside`."""
    return Path(_git(inside, "rev-parse", "--show-toplevel"))


def resolve_ref(repo: Path, ref: str) -> str:
    """REF's full commit id (raises RuntimeError if it names no commit)."""
    return _git(repo, "rev-parse", "--verify", "--end-of-options", f"{ref}^{{commit}}")


@dataclass(frozen=True, slots=True)
class PreviousTree:
    """REF checked out, and how to run Python on it."""

    ref: str
    commit: str
    subject: str
    worktree: Path
    import_root: Path  # first on PYTHONPATH: holds visionrpc/ (symlinks into the worktree)
    pycache: Path  # the server's PYTHONPYCACHEPREFIX

    def env(self, *, pycache: bool = False) -> dict[str, str]:
        """Our environment with REF's `visionrpc` first on the path (and, for the server, its own pycache)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(self.import_root), os.environ.get("PYTHONPATH", "")) if p
        )
        env.pop("PYTHONPYCACHEPREFIX", None)
        if pycache:  # bytecode written, into a folder of its own: the trace verify_imports reads
            env["PYTHONPYCACHEPREFIX"] = str(self.pycache)
            env.pop("PYTHONDONTWRITEBYTECODE", None)
        return env

    def probe_imports(self) -> dict[str, Any]:
        """Where a Python started like the server (same interpreter, environment and folder) finds
        `visionrpc`; raises RuntimeError if it is not the worktree."""
        done = subprocess.run(
            [sys.executable, "-c", _PROBE],
            env=self.env(),
            cwd=self.import_root,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"REF's visionrpc does not import:\n{done.stderr}")
        found: dict[str, Any] = json.loads(done.stdout)
        for where in [found["visionrpc.server.cli.__file__"], *found["visionrpc.server.__path__"]]:
            if not self._inside_worktree(Path(where)):
                raise RuntimeError(f"the probe imported visionrpc from {where}, not from {self.worktree}")
        found["visionrpc.server.cli.__file__ resolved"] = str(
            Path(found["visionrpc.server.cli.__file__"]).resolve()
        )
        return found

    def verify_imports(self, repo: Path) -> dict[str, Any]:
        """The server's own imports, read from the .pyc files it left under `pycache`: how many `visionrpc`
        modules came from the worktree, a few of them by path, and none from `repo`'s own folders.

        Raises:
            RuntimeError: a `visionrpc` module came from elsewhere, or none came from the worktree.
        """
        sources = sorted(_sources(self.pycache))
        ours = self.import_root / "visionrpc"
        from_tree = [s for s in sources if _is_below(s, ours) or self._inside_worktree(s)]
        role_dirs = [(repo / d).resolve() for d in _package_dir(repo).values()]
        foreign = [
            s for s in sources if s not in from_tree and any(_is_below(s.resolve(), d) for d in role_dirs)
        ]
        if foreign:
            raise RuntimeError(
                f"the previous server imported {len(foreign)} visionrpc module(s) from the current "
                f"checkout, e.g. {foreign[0]}: it would not measure {self.ref}"
            )
        if not any(s.name == "cli.py" and _is_below(s, ours / "server") for s in from_tree):
            raise RuntimeError(
                f"the previous server left no trace of {ours / 'server' / 'cli.py'} in {self.pycache}; "
                "cannot tell what it ran"
            )
        samples = [s for s in from_tree if s.name in ("cli.py", "app.py", "inference.py", "scheduler.py")]
        return {
            "visionrpc_modules_from_worktree": len(from_tree),
            "visionrpc_modules_from_current_checkout": 0,
            "examples": [f"{s} -> {s.resolve()}" for s in samples],
        }

    def _inside_worktree(self, path: Path) -> bool:
        return _is_below(path.resolve(), self.worktree.resolve())


def _is_below(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _sources(pycache: Path) -> Iterator[Path]:
    """The source file of each .pyc under a PYTHONPYCACHEPREFIX tree (which mirrors absolute paths)."""
    tag = sys.implementation.cache_tag
    for pyc in pycache.rglob(f"*.{tag}*.pyc"):
        name = pyc.name.split(f".{tag}", 1)[0] + ".py"
        yield Path("/") / pyc.parent.relative_to(pycache) / name


def _package_dir(worktree: Path) -> dict[str, str]:
    pyproject = worktree / "pyproject.toml"
    try:
        setuptools = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]
        mapping = setuptools["package-dir"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return dict(_DEFAULT_PACKAGE_DIR)
    return {str(k): str(v) for k, v in mapping.items() if str(k).startswith("visionrpc.")}


@contextmanager
def checkout(ref: str, repo: Path, work_dir: Path) -> Iterator[PreviousTree]:
    """REF in a worktree under `work_dir`, with its import folder; removed on exit."""
    commit = resolve_ref(repo, ref)
    worktree = work_dir / "previous-worktree"
    _git(repo, "worktree", "add", "--detach", "--quiet", str(worktree), commit)
    try:
        import_root = work_dir / "previous-imports"
        (import_root / "visionrpc").mkdir(parents=True)
        for package, folder in _package_dir(worktree).items():
            link = import_root / Path(*package.split("."))
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(worktree / folder, target_is_directory=True)
        yield PreviousTree(
            ref=ref,
            commit=commit,
            subject=_git(repo, "log", "-1", "--format=%s", commit),
            worktree=worktree,
            import_root=import_root,
            pycache=work_dir / "previous-pycache",
        )
    finally:
        try:
            _git(repo, "worktree", "remove", "--force", str(worktree))
        except RuntimeError as exc:  # reported, not raised: the measurements are already taken
            logger.warning("could not remove the worktree %s: %s", worktree, exc)
