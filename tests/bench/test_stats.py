"""The benchmark's statistics and verdicts on synthetic inputs: the median of paired values with its spread,
two runs' agreement, the targets read from a results dict, and perf's output. No server, milliseconds."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from bench.instructions import parse_perf_csv
from bench.report import render_repeat, repeat_agreement, verdict
from bench.stats import agreement, spread_summary
from bench.targets import Target, evaluate_targets


@pytest.mark.parametrize(
    ("values", "median", "ci", "q1", "q3"),
    [
        # Too few pairs for a 95% interval of the median (binomial: 6 at least).
        ([1.0, 2.0, 3.0], 2.0, None, 1.5, 2.5),
        # Six pairs: the interval is the extremes.
        ([0.9, 1.0, 1.1, 1.0, 0.95, 1.05], 1.0, [0.9, 1.1], 0.9625, 1.0375),
        # Twelve pairs, one wild outlier (a minute of drift): the median and its interval ignore it.
        ([1.0] * 11 + [5.0], 1.0, [1.0, 1.0], 1.0, 1.0),
        # Drift that moves both sides of every pair cancels: ratios stay at 0.98 whatever the speed.
        ([0.98] * 16, 0.98, [0.98, 0.98], 0.98, 0.98),
    ],
)
def test_spread_summary(
    values: list[float], median: float, ci: list[float] | None, q1: float, q3: float
) -> None:
    summary = spread_summary(values)
    assert summary["pairs"] == len(values)
    assert summary["median"] == pytest.approx(median)
    assert summary["ci95"] == (None if ci is None else pytest.approx(ci))
    assert (summary["q1"], summary["q3"]) == (pytest.approx(q1), pytest.approx(q3))
    assert summary["min"] == min(values) and summary["max"] == max(values)
    assert summary["iqr_half_width"] == pytest.approx((q3 - q1) / 2 / median, abs=1e-4)


def test_spread_summary_needs_values() -> None:
    with pytest.raises(ValueError, match="at least one"):
        spread_summary([])


@pytest.mark.parametrize(
    ("first", "second", "change", "agree"),
    [
        (1.0, 1.0, 0.0, True),
        (0.98, 1.0, 0.0204, True),
        (1.0, 1.029, 0.029, True),
        (1.0, 0.97, -0.03, True),  # the edge counts as agreeing
        (0.749, 1.017, 0.3578, False),  # issue 15's two runs of c=16
        (1.111, 0.746, -0.3285, False),  # and of the stream
    ],
)
def test_agreement_within_three_percent(first: float, second: float, change: float, agree: bool) -> None:
    result = agreement(first, second)
    assert result["change"] == pytest.approx(change, abs=1e-4)
    assert result["agree"] is agree


def test_agreement_refuses_non_positive_figures() -> None:
    with pytest.raises(ValueError, match="positive"):
        agreement(0.0, 1.0)


@pytest.mark.parametrize(
    ("stderr", "count"),
    [
        ("12345678,,instructions:u,1000,100.00,,\n", 12345678),
        ("<not supported>,,instructions:u,0,100.00,,\n", None),
        ("<not counted>,,instructions:u,0,0.00,,\n", None),
        ("perf: command not found\n", None),
    ],
)
def test_parse_perf_csv(stderr: str, count: int | None) -> None:
    assert parse_perf_csv(stderr) == count


def _paired(values: list[float]) -> dict[str, Any]:
    return spread_summary(values)


def _results(
    *,
    difference_ms: float = 1.0,
    throughput: float = 0.99,
    stream: float = 1.01,
    fanout: float = 1.05,
    warm_mb: float = 280.0,
    growth_mb: float = 4.0,
    postprocess_ms: float = 0.25,
    shm: bool = False,
) -> dict[str, Any]:
    """A results dict shaped like run_benchmark's, with 12 pairs of each measure at the given medians."""

    def latency(diff: float) -> dict[str, Any]:
        return {
            "pairs": 12,
            "in_process": {"p50_ms": 30.0},
            "served": {"p50_ms": 30.0 + diff},
            "difference_ms": _paired([diff] * 12),
            "ratio": _paired([(30.0 + diff) / 30.0] * 12),
            "in_process_cpu_ms_per_image": 55.0,
            "server_cpu_ms_per_image": 56.0,
        }

    def rate(ratio: float) -> dict[str, Any]:
        return {
            "in_process": {"batch": 1, "threads": 1, "images_per_s_total": 30.0, "cpu_ms_per_image": 55.0},
            "served": {"concurrency": 16, "requests_per_s_total": 30.0 * ratio, "cpu_ms_per_image": 56.0},
            "ratio": _paired([ratio] * 12),
        }

    paired = {
        "latency": latency(difference_ms),
        "throughput": rate(throughput),
        "stream": {
            "in_process": {"fps_total": 30.0, "cpu_ms_per_frame": 50.0},
            "served": {"fps_total": 30.0 * stream, "cpu_ms_per_frame": 51.0},
            "ratio": _paired([stream] * 12),
        },
        "fanout": {
            "1": {"server_cpu_ms_per_frame": 40.0},
            "8": {"server_cpu_ms_per_frame": 40.0 * fanout},
            "ratio": _paired([fanout] * 12),
        },
    }
    return {
        "mode": "full",
        "paired": paired,
        "floor": {"outside_handler_p50_ms": 1.7},
        "shared_memory": (
            {"measured": True, "latency": latency(0.3), "throughput": rate(0.99)}
            if shm
            else {"measured": False, "reason": "the server has no --shared-memory flag"}
        ),
        "memory": {
            "concurrency": 16,
            "warmup": {"requests": 33, "rss_mb": warm_mb},
            "checkpoints": [
                {"requests": 1000, "rss_mb": warm_mb + 2},
                {"requests": 10000, "rss_mb": warm_mb + 2 + growth_mb},
            ],
            "growth_mb": growth_mb,
        },
        "unary": {"c1": {"server_pipeline_p50_ms": {"postprocess_ms": postprocess_ms}}},
    }


def _verdicts(targets: list[Target]) -> dict[str, bool | None]:
    return {target.name: target.met for target in targets}


@pytest.mark.parametrize(
    ("changes", "missed"),
    [
        ({}, set()),
        ({"difference_ms": 1.6}, {"unary p50 latency, c=1"}),
        ({"throughput": 0.97}, {"unary throughput, c=16"}),
        ({"stream": 0.99}, {"stream frames/s, every-frame delivery"}),
        ({"fanout": 1.2}, {"fan-out: server CPU per frame, 8 subscribers vs 1"}),
        ({"warm_mb": 310.0}, {"server RSS after warm-up, default model"}),
        ({"growth_mb": 10.5}, {"server RSS growth, 1,000 -> 10,000 requests"}),
        ({"postprocess_ms": 0.3}, {"post-processing per image (responses' postprocess, c=1)"}),
    ],
)
def test_each_target_is_met_or_missed_at_its_limit(changes: dict[str, float], missed: set[str]) -> None:
    verdicts = _verdicts(evaluate_targets(_results(**changes)))  # type: ignore[arg-type]
    assert {name for name, met in verdicts.items() if met is False} == missed
    shm = {name for name, met in verdicts.items() if met is None}
    assert shm == {
        "unary p50 latency, c=1, shared-memory input",
        "unary throughput, c=16, shared-memory input",
    }


def test_shared_memory_targets_when_measured() -> None:
    targets = {t.name: t for t in evaluate_targets(_results(shm=True))}
    latency = targets["unary p50 latency, c=1, shared-memory input"]
    assert latency.met is True and latency.target == "<= in-process + 0.5 ms"
    assert targets["unary throughput, c=16, shared-memory input"].met is True


def test_a_limit_inside_the_interval_is_not_decided() -> None:
    results = _results()
    # Pairs straddling 0.98: the median meets the limit, but the interval holds it.
    results["paired"]["throughput"]["ratio"] = spread_summary([0.95, 0.97, 0.98, 0.99, 1.0, 1.01] * 2)
    target = next(t for t in evaluate_targets(results) if t.name == "unary throughput, c=16")
    assert target.met is True and target.decided is False
    assert verdict(target) == "met *(within the interval)*"


@pytest.mark.parametrize(
    ("second", "agree_all"),
    [
        ({}, True),
        ({"throughput": 0.99 * 1.02}, True),
        ({"throughput": 0.99 * 0.96}, False),
        ({"stream": 1.01 * 1.04}, False),
    ],
)
def test_two_runs_agree_within_three_percent(second: dict[str, float], agree_all: bool) -> None:
    first = evaluate_targets(_results())
    rows = repeat_agreement([first, evaluate_targets(_results(**second))])  # type: ignore[arg-type]
    ratios = [row for row in rows if "agree" in row]
    # c=1, c=16, stream and fan-out are ratios; the RSS figures, unmeasured targets and post-processing
    # against a recorded figure (no --baseline-ref) are not.
    assert len(ratios) == 4
    assert all(row["agree"] for row in ratios) is agree_all
    table = render_repeat(rows)
    assert ("**yes**" in table) is agree_all


def test_repeat_agreement_marks_a_target_missed_in_either_run() -> None:
    rows = repeat_agreement([evaluate_targets(_results()), evaluate_targets(_results(warm_mb=320.0))])
    row = next(r for r in rows if r["name"] == "server RSS after warm-up, default model")
    assert row["met"] == [True, False] and row["held_in_both"] is False


def test_results_are_not_modified() -> None:
    results = _results()
    before = copy.deepcopy(results)
    evaluate_targets(results)
    assert results == before
