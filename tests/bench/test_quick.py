"""The benchmark harness must keep running: `python -m bench --quick` end to end, against a real server, and
`--baseline-ref` measuring it against an earlier commit's server in the same run.

One run serves both tests (a quick run takes 1-2 minutes on 2 idle cores, several on a busy one):
`--baseline-ref HEAD`, so the "previous" server is the last commit's code from a temporary worktree, whatever
the working tree holds; it
checks the plumbing (checkout, imports, both servers, the report's comparison table), not old code's speed.
Only that it runs and measures something is checked, never whether a target is met or the current server is
faster: timings on a shared CI machine are not pass/fail material (bench/README.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.report import Target, render_markdown

REPO = Path(__file__).resolve().parents[2]


# May be zero or negative: drop counters, step timings (a raw image has no decode step), differences.
_NOT_POSITIVE = {
    "results_dropped", "results_dropped_max", "growth_mb", "noise", "targets", "pipeline_p50_ms",
    "server_pipeline_p50_ms", "median_pair_difference_ms", "outside_pipeline_p50_ms",
    "outside_handler_p50_ms", "comparison", "difference_ms", "instructions", "shared_memory", "q1", "min",
    "iqr_half_width",
}  # fmt: skip


def _positive_numbers(value: Any, where: str) -> int:
    """Checks every number under `value` is > 0 (but those in `_NOT_POSITIVE`); returns how many there are."""
    if isinstance(value, dict):
        return sum(
            _positive_numbers(item, f"{where}.{key}")
            for key, item in value.items()
            if key not in _NOT_POSITIVE
        )
    if isinstance(value, list):
        return sum(_positive_numbers(item, f"{where}[{i}]") for i, item in enumerate(value))
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    assert value > 0, f"{where} = {value}"
    return 1


def _git(*args: str) -> str | None:
    done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def _worktrees() -> set[str]:
    listing = _git("worktree", "list", "--porcelain") or ""
    return {line.split(" ", 1)[1] for line in listing.splitlines() if line.startswith("worktree ")}


@dataclass(frozen=True)
class QuickRun:
    out: Path
    report: dict[str, Any]
    markdown: str
    stdout: str
    compared: bool  # with --baseline-ref HEAD (not in a git checkout: without)
    head_at_start: str | None  # HEAD when the run started (others may commit while it runs)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    out = tmp_path_factory.mktemp("bench")
    head_at_start = _git("rev-parse", "--verify", "HEAD^{commit}")
    compared = head_at_start is not None
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)]
        + (["--baseline-ref", "HEAD"] if compared else []),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "latest.json").read_text())
    markdown = (out / "latest.md").read_text()
    return QuickRun(out, report, markdown, done.stdout, compared, head_at_start)


@pytest.mark.slow
@pytest.mark.timeout(450)
def test_quick_mode_runs_end_to_end(quick_run: QuickRun) -> None:
    report = quick_run.report
    assert report["mode"] == "quick"
    for section in ("machine", "in_process", "unary", "memory", "paired", "floor", "cold_start", "targets"):
        assert report[section], section
    for key in ("latency", "throughput"):
        assert _positive_numbers(report["in_process"][key], key) > 0
    assert set(report["unary"]) == {"c1", "c4", "c16", "c1_png"}
    for phase in report["unary"].values():
        assert phase["latency"]["p50_ms"] > 0 and phase["requests_per_s"] > 0
        assert phase["detections_in_checked_response"] > 0  # real photos, real detections
    paired = report["paired"]
    assert paired["latency"]["in_process"]["p50_ms"] > 0 and paired["latency"]["served"]["p50_ms"] > 0
    assert paired["latency"]["server_cpu_ms_per_image"] > 0
    assert paired["latency"]["difference_ms"]["pairs"] == 20
    throughput, stream = paired["throughput"], paired["stream"]
    for measure, per in ((throughput, "image"), (stream, "frame")):
        # Alternating segments: one per side per pair, each with its CPU time; a ratio per pair.
        assert len(measure["in_process"]["segments"]) == len(measure["served"]["segments"]) == 2
        assert measure["ratio"]["pairs"] == 2 and all(r > 0 for r in measure["ratio"]["values"])
        assert measure["ratio"]["min"] <= measure["ratio"]["median"] <= measure["ratio"]["max"]
        assert measure["in_process"][f"cpu_ms_per_{per}"] > 0 and measure["served"][f"cpu_ms_per_{per}"] > 0
    assert paired["fanout"]["ratio"]["pairs"] == 1
    for key in ("1", "8"):
        assert paired["fanout"][key]["server_cpu_ms_per_frame"] > 0
        for run in paired["fanout"][key]["runs"]:
            assert run["pipelines"] == 1  # the subscribers shared one pipeline
            assert run["frames"] > 0
    floor = report["floor"]  # a bare grpcio server around the same engine call
    assert floor["latency"]["p50_ms"] >= floor["engine_p50_ms"] > 0
    assert isinstance(floor["outside_handler_p50_ms"], float)
    memory = report["memory"]
    assert memory["warmup"]["rss_mb"] > 0
    assert [point["requests"] for point in memory["checkpoints"]] == [100, 300]
    assert all(point["rss_mb"] > 0 for point in memory["checkpoints"])
    assert _positive_numbers({k: v for k, v in report.items() if k != "machine"}, "report") > 50
    cold = report["cold_start"]  # a fresh server: exec -> SERVING, then its first request
    assert cold["starts"] == 1 and cold["exec_to_serving_s"] > 0 and cold["first_request_ms"] > 0
    assert isinstance(report["instructions"]["available"], bool)
    if not report["instructions"]["available"]:
        assert report["instructions"]["reason"]  # says why nothing was counted
    shm = report["shared_memory"]
    if shm["measured"]:
        assert shm["latency"]["served"]["p50_ms"] > 0 and shm["throughput"]["ratio"]["median"] > 0
    names = [target["name"] for target in report["targets"]]
    assert len(names) == 9 and "server RSS after warm-up, default model" in names
    for target in report["targets"]:
        assert target["ratio"] >= 0 and target["met"] in (True, False, None), target
        assert (target["met"] is None) == target["measured"].startswith("not measured"), target
    assert "## Targets" in quick_run.markdown and "onnxruntime" in quick_run.markdown
    assert "cold start: exec -> SERVING" in quick_run.markdown


@pytest.mark.slow
@pytest.mark.timeout(450)
def test_baseline_ref_compares_with_the_previous_server(quick_run: QuickRun) -> None:
    if not quick_run.compared:
        pytest.skip("not a git checkout: --baseline-ref needs one")
    comparison = quick_run.report["comparison"]
    previous = comparison["previous"]
    # HEAD of the checkout the measured server code lives in (this one, unless PYTHONPATH says otherwise).
    source = comparison["current"]["server_source"]
    head = subprocess.run(["git", "-C", source, "rev-parse", "HEAD"], capture_output=True, text=True)
    # HEAD as the run began, or as it ended: in a shared checkout a commit may land in between.
    assert previous["ref"] == "HEAD" and previous["commit"] in {head.stdout.strip(), quick_run.head_at_start}
    # REF's code, from the worktree, in the server process itself (its .pyc trace) and in a probe.
    worktree = previous["worktree"]
    assert previous["imports"]["visionrpc_modules_from_worktree"] > 20
    assert previous["imports"]["visionrpc_modules_from_current_checkout"] == 0
    assert any(f"{worktree}/server/cli.py" in example for example in previous["imports"]["examples"])
    probe = previous["import_probe"]
    (server_path,) = probe["visionrpc.server.__path__"]
    assert server_path.endswith("/previous-imports/visionrpc/server")
    assert probe["visionrpc.server.cli.__file__ resolved"] == str(Path(worktree).resolve() / "server/cli.py")
    assert not Path(worktree).exists() and worktree not in _worktrees()  # removed afterwards
    # The same flags, with the same model repository, for both servers; only the measured one also takes
    # shared-memory inputs (its own phases use them; the comparison sends raw pixels to both).
    current_argv, previous_argv = comparison["current"]["argv"], previous["argv"]
    assert previous_argv[:4] == current_argv[:4] == [current_argv[0], "-m", "visionrpc.server.cli", "serve"]
    flags = {arg for arg in previous_argv if arg.startswith("--") and arg != "--port"}
    current_flags = {arg for arg in current_argv if arg.startswith("--") and arg != "--port"}
    assert flags == current_flags - {"--shared-memory"}
    repository = previous_argv[previous_argv.index("--model-repository") + 1]
    assert repository == current_argv[current_argv.index("--model-repository") + 1]
    assert previous["exit_status"] == 0
    measures = comparison["measures"]
    assert set(measures) == {"unary_p50_c1", "unary_throughput_c4", "unary_throughput_c16", "stream_fps"}
    for name, measure in measures.items():
        assert measure["pairs"] == comparison["cycles"] == 2, name
        for side in ("current", "previous"):
            assert measure[side]["value"] > 0, (name, side)
            assert len(measure[side]["segments"]) == 2, (name, side)
            assert measure[side][f"server_cpu_ms_per_{measure['server_cpu_per']}"] > 0, (name, side)
        assert len(measure["ratios"]) == 2 and all(r > 0 for r in measure["ratios"])
        assert measure["ratio_min"] <= measure["ratio_median"] <= measure["ratio_max"]
        assert measure["ratio_ci95"] is None and measure["within_noise"] is None  # 2 pairs: too few
    assert all(mb > 0 for mb in comparison["rss_mb_after"].values())
    post = comparison["postprocess"]  # the responses' postprocess timing, both servers, alternating blocks
    assert post["current_ms"] > 0 and post["previous_ms"] > 0 and isinstance(post["same_detections"], bool)
    assert all(count > 0 for count in post["detections"]["previous"])
    assert "## Current vs previous server" in quick_run.markdown
    for label in ("unary p50 latency, c=1", "unary throughput, c=4", "unary throughput, c=16"):
        assert f"| {label} (" in quick_run.markdown
    assert "| stream frames/s, every-frame delivery (fps) |" in quick_run.markdown
    assert "vs HEAD: unary throughput, c=16:" in quick_run.stdout


@pytest.mark.slow
@pytest.mark.timeout(450)
def test_report_without_comparison_has_no_comparison_table(quick_run: QuickRun) -> None:
    """A run without --baseline-ref renders as before (the same report, minus the comparison)."""
    results = {k: v for k, v in quick_run.report.items() if k not in ("comparison", "targets")}
    targets = [Target(**t) for t in quick_run.report["targets"]]
    markdown = render_markdown(results, targets)
    assert "## Targets" in markdown and "Current vs previous" not in markdown
