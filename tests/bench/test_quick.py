"""The benchmark harness must keep running: `python -m bench --quick` end to end, against a real server.

Only that it runs and measures something is checked, never whether the targets are met: timings on a shared
CI machine are not pass/fail material (bench/README.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


# May be zero or negative: drop counters, step timings (a raw image has no decode step), differences.
_NOT_POSITIVE = {
    "results_dropped", "results_dropped_max", "growth_mb", "noise", "targets", "pipeline_p50_ms",
    "server_pipeline_p50_ms", "median_pair_difference_ms", "outside_pipeline_p50_ms",
    "outside_handler_p50_ms",
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


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_quick_mode_runs_end_to_end(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=140,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "latest.json").read_text())
    assert report["mode"] == "quick"
    for section in ("machine", "in_process", "unary", "memory", "paired", "floor", "targets"):
        assert report[section], section
    for key in ("latency", "throughput"):
        assert _positive_numbers(report["in_process"][key], key) > 0
    assert set(report["unary"]) == {"c1", "c4", "c16", "c1_png"}
    for phase in report["unary"].values():
        assert phase["latency"]["p50_ms"] > 0 and phase["requests_per_s"] > 0
        assert phase["detections_in_checked_response"] > 0  # real photos, real detections
    paired = report["paired"]
    assert paired["latency"]["in_process"]["p50_ms"] > 0 and paired["latency"]["served"]["p50_ms"] > 0
    assert paired["throughput"]["in_process"]["images_per_s"] > 0
    assert paired["throughput"]["served"]["requests_per_s"] > 0
    assert paired["stream"]["served"]["fps"] > 0 and paired["stream"]["in_process"]["fps"] > 0
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
    assert [point["requests"] for point in memory["checkpoints"]] == [100, 500]
    assert all(point["rss_mb"] > 0 for point in memory["checkpoints"])
    assert _positive_numbers({k: v for k, v in report.items() if k != "machine"}, "report") > 50
    assert len(report["targets"]) == 5
    assert all(target["ratio"] >= 0 and isinstance(target["met"], bool) for target in report["targets"])
    markdown = (tmp_path / "latest.md").read_text()
    assert "## Targets" in markdown and "onnxruntime" in markdown
