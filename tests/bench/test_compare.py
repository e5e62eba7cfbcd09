"""The comparison's arithmetic (compare.py, stats.py) and the previous server's checkout (previous.py), on a
throw-away git repository shaped like this one: no server, seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.compare import summarise_pairs, window_rate
from bench.previous import checkout
from bench.report import comparison_reading
from bench.stats import median_ci


def test_window_rate_spreads_each_request_over_its_lifetime() -> None:
    # In a 2 s window: two requests wholly, two half (one at each edge), one not at all: 3 in 2 s.
    spans = [(0.5, 1.5), (1.0, 2.0), (2.0, 2.5), (2.5, 3.5), (4.0, 5.0)]
    assert window_rate(spans, 1.0, 3.0) == pytest.approx(3.0 / 2.0)
    # A batch of 8 responses arriving together counts the same on both sides of a window edge.
    batch = [(0.0, 1.0)] * 8
    assert window_rate(batch, 0.5, 1.5) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="closes after it opens"):
        window_rate(spans, 2.0, 2.0)


@pytest.mark.parametrize(
    ("n", "ranks"),
    [(5, None), (6, (1, 6)), (8, (1, 8)), (9, (2, 8)), (12, (3, 10)), (24, (7, 18))],
)
def test_median_ci_uses_binomial_ranks(n: int, ranks: tuple[int, int] | None) -> None:
    values = [float(v) for v in range(n, 0, -1)]  # unsorted on purpose: value == its rank
    assert median_ci(values) == (None if ranks is None else (float(ranks[0]), float(ranks[1])))


def test_summarise_pairs_orients_the_change() -> None:
    faster = summarise_pairs([10.0] * 7, [11.0] * 7, higher_is_better=False)  # latency: lower is better
    assert faster["ratio_median"] == pytest.approx(10 / 11, abs=1e-4)
    assert faster["current_better_by"] > 0 and faster["within_noise"] is False
    assert comparison_reading(faster) == "current 9.1% faster: beyond noise"
    slower = summarise_pairs([9.0] * 7, [10.0] * 7, higher_is_better=True)  # throughput: higher is better
    assert slower["current_better_by"] == pytest.approx(-0.1)
    assert "regression beyond noise" in comparison_reading(slower)
    mixed = summarise_pairs([9.0, 11.0, 10.0, 9.5, 10.5, 10.0], [10.0] * 6, higher_is_better=True)
    assert mixed["within_noise"] is True and mixed["ratio_ci95"] == [0.9, 1.1]
    assert comparison_reading(mixed).endswith("within noise")
    few = summarise_pairs([1.0, 2.0], [1.0, 1.0], higher_is_better=True)
    assert few["ratio_ci95"] is None and "too few pairs" in comparison_reading(few)


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, env=env
    ).stdout.strip()


def _repo(tmp_path: Path) -> Path:
    """A repository laid out like this one: role folders mapped into `visionrpc` by package-dir."""
    repo = tmp_path / "repo"
    for folder in ("server", "engines", "clients/python"):
        (repo / folder).mkdir(parents=True)
        (repo / folder / "__init__.py").write_text("VERSION = 'old'\n")
    (repo / "server" / "cli.py").write_text("from visionrpc.engines import VERSION\n")
    (repo / "pyproject.toml").write_text(
        "[tool.setuptools]\npackage-dir = { 'visionrpc.server' = 'server', "
        "'visionrpc.engines' = 'engines', 'visionrpc.client' = 'clients/python' }\n"
    )
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "old server")
    (repo / "server" / "__init__.py").write_text("VERSION = 'new, uncommitted'\n")
    return repo


def test_checkout_serves_refs_code_and_proves_it(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    with checkout("HEAD", repo, work) as tree:
        assert tree.commit == _git(repo, "rev-parse", "HEAD") and tree.subject == "old server"
        assert (tree.import_root / "visionrpc" / "client").resolve() == tree.worktree / "clients/python"
        probe = tree.probe_imports()
        assert probe["visionrpc.server.__path__"] == [str(tree.import_root / "visionrpc" / "server")]
        # Run like the server: REF's code wins over anything later on the path, and leaves its trace.
        env = tree.env(pycache=True)
        env["PYTHONPATH"] += os.pathsep + str(tmp_path)  # a decoy `visionrpc` later on the path
        (tmp_path / "visionrpc" / "server").mkdir(parents=True)
        (tmp_path / "visionrpc" / "server" / "__init__.py").write_text("VERSION = 'decoy'\n")
        done = subprocess.run(
            [sys.executable, "-c", "import visionrpc.server as s, visionrpc.server.cli; print(s.VERSION)"],
            env=env,
            cwd=tree.import_root,
            capture_output=True,
            text=True,
            check=True,
        )
        assert done.stdout.strip() == "old"
        proof = tree.verify_imports(repo)
        assert proof["visionrpc_modules_from_worktree"] == 3  # server, server.cli, engines
        assert any(example.endswith(f"{tree.worktree}/server/cli.py") for example in proof["examples"])
        # A module of the current checkout among the server's imports fails the run.
        tag = sys.implementation.cache_tag
        foreign = tree.pycache / str(repo / "server").lstrip("/") / f"__init__.{tag}.pyc"
        foreign.parent.mkdir(parents=True)
        foreign.write_bytes(b"")
        with pytest.raises(RuntimeError, match="from the current checkout"):
            tree.verify_imports(repo)
    assert not tree.worktree.exists()
    assert str(tree.worktree) not in _git(repo, "worktree", "list")


def test_checkout_refuses_an_unknown_ref(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    with pytest.raises(RuntimeError, match="rev-parse"), checkout("no-such-ref", repo, tmp_path):
        pass
