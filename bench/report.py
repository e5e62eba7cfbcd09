"""Targets as ratios of this run's own measurements, and the JSON and Markdown reports."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["COMPARED", "Target", "comparison_reading", "evaluate_targets", "render_markdown", "write_reports"]

# DESIGN.md, "Performance yardsticks": the server's overhead is a ratio to the in-process pipeline.
UNARY_P50_OVERHEAD_MS = 1.5
THROUGHPUT_RATIO = 0.95
STREAM_RATIO = 0.95
FANOUT_CPU_RATIO = 1.15
RSS_GROWTH_MB = 30.0
NOISY_SHARE = 0.05  # other processes' share of the machine's CPU above which a run is flagged as noisy


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    measured: str  # the measurement, in words and units
    target: str
    ratio: float  # measured against the limit, oriented so that <= 1.0 always means met
    met: bool


def _unary_latency(pairs: dict[str, Any], floor: dict[str, Any]) -> Target:
    base, served = pairs["in_process"]["p50_ms"], pairs["served"]["p50_ms"]
    limit = base + UNARY_P50_OVERHEAD_MS
    return Target(
        "unary p50 latency, c=1",
        f"{served:.2f} ms vs in-process {base:.2f} ms: {served - base:+.2f} ms ({pairs['pairs']} interleaved "
        f"pairs; median pair difference {pairs['median_pair_difference_ms']:+.2f} ms; gRPC's own floor here "
        f"+{floor['outside_handler_p50_ms']:.2f} ms)",
        f"<= in-process + {UNARY_P50_OVERHEAD_MS} ms = {limit:.2f} ms",
        served / limit,
        served <= limit,
    )


def _ratio_target(
    name: str,
    measured: str,
    ratio: float,
    *,
    at_least: float | None = None,
    at_most: float | None = None,
    of: str = "",
) -> Target:
    """A target on served / baseline, with the limit in words and the ratio oriented so <= 1 means met."""
    of = f" {of}" if of else ""
    if at_least is not None:
        return Target(name, measured, f">= {at_least} x{of}", at_least / ratio, ratio >= at_least)
    assert at_most is not None, "a ratio target needs at_least or at_most"
    return Target(name, measured, f"<= {at_most} x{of}", ratio / at_most, ratio <= at_most)


def _unary_throughput(paired: dict[str, Any]) -> Target:
    local, served = paired["in_process"], paired["served"]
    ratio = served["requests_per_s"] / local["images_per_s"]
    return _ratio_target(
        f"unary throughput, c={served['concurrency']}",
        f"{served['requests_per_s']:.1f} img/s = {ratio:.3f} x in-process best {local['images_per_s']:.1f} "
        f"img/s (batch {local['batch']}, {local['threads']} thread(s); {paired['rounds']} rounds each)",
        ratio,
        at_least=THROUGHPUT_RATIO,
        of="in-process best",
    )


def _stream(paired: dict[str, Any]) -> Target:
    served, loop = paired["served"]["fps"], paired["in_process"]["fps"]
    ratio = served / loop
    return _ratio_target(
        "stream frames/s, every-frame delivery",
        f"{served:.1f} fps = {ratio:.3f} x in-process loop {loop:.1f} fps ({paired['rounds']} rounds each)",
        ratio,
        at_least=STREAM_RATIO,
        of="in-process loop",
    )


def _fanout(paired: dict[str, Any]) -> Target:
    one, many = paired["1"]["server_cpu_ms_per_frame"], paired["8"]["server_cpu_ms_per_frame"]
    ratio = many / one
    return _ratio_target(
        "fan-out: server CPU per frame, 8 subscribers vs 1",
        f"{many:.1f} vs {one:.1f} ms/frame = {ratio:.3f} x ({paired['rounds']} rounds each)",
        ratio,
        at_most=FANOUT_CPU_RATIO,
    )


def _memory(memory: dict[str, Any], full: bool) -> Target:
    first, last = memory["checkpoints"]
    growth = memory["growth_mb"]
    return Target(
        f"server RSS growth, {first['requests']:,} -> {last['requests']:,} requests",
        f"{growth:+.1f} MB ({first['rss_mb']:.1f} -> {last['rss_mb']:.1f} MB)",
        f"<= {RSS_GROWTH_MB:.0f} MB" + ("" if full else " (defined for 1k -> 10k)"),
        max(growth, 0.0) / RSS_GROWTH_MB,
        growth <= RSS_GROWTH_MB,
    )


def evaluate_targets(results: dict[str, Any]) -> list[Target]:
    """The targets, each from the interleaved comparison of its two sides (paired.py), memory aside."""
    paired = results["paired"]
    return [
        _unary_latency(paired["latency"], results["floor"]),
        _unary_throughput(paired["throughput"]),
        _stream(paired["stream"]),
        _fanout(paired["fanout"]),
        _memory(results["memory"], results["mode"] == "full"),
    ]


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _latency(summary: dict[str, float]) -> str:
    return f"p50 {summary['p50_ms']:.2f} ms, p99 {summary['p99_ms']:.2f} ms (n={summary['count']:.0f})"


def _steps(timings: dict[str, float]) -> str:
    names = ("decode", "queue", "preprocess", "inference", "postprocess", "total")
    return ", ".join(f"{name} {timings[name + '_ms']:.2f}" for name in names) + " ms"


def _measurements(results: dict[str, Any]) -> list[str]:
    ip, unary, paired = results["in_process"], results["unary"], results["paired"]
    memory, quick = results["memory"], results["mode"] != "full"
    rows = [_row("in-process latency, 1 image, 1 thread", _latency(ip["latency"]))]
    for run in ip["throughput"]["tried"]:
        rows.append(
            _row(
                f"in-process throughput, batch {run['batch']}, {run['threads']} thread(s)",
                f"{run['images_per_s']:.1f} img/s ({run['images']} images)",
            )
        )
    for key, phase in unary.items():
        payload = "PNG-encoded (the server decodes)" if key == "c1_png" else "raw pixels"
        rows.append(
            _row(
                f"unary Infer c={phase['concurrency']}, {payload}",
                f"{_latency(phase['latency'])}; {phase['requests_per_s']:.1f} req/s; "
                f"load generator {phase['client_cpu_ms_per_request']:.2f} ms CPU/request",
            )
        )
    steps = ip["latency"]["pipeline_p50_ms"], unary["c1"]["server_pipeline_p50_ms"]
    rows.append(_row("pipeline steps p50, in-process, 1 image", _steps(steps[0])))
    outside = unary["c1"]["outside_pipeline_p50_ms"]
    rows.append(
        _row(
            "pipeline steps p50, server at c=1 (from the responses)",
            f"{_steps(steps[1])}; outside the pipeline (gRPC, transport, servicer) {outside:.2f} ms",
        )
    )
    floor = results["floor"]
    rows.append(
        _row(
            "transport floor: a bare grpc.aio server handing the same engine call to a worker, c=1",
            f"{_latency(floor['latency'])}; engine {floor['engine_p50_ms']:.2f} ms; outside the engine call "
            f"{floor['outside_handler_p50_ms']:.2f} ms "
            f"(so visionrpc's servicer adds {outside - floor['outside_handler_p50_ms']:+.2f} ms)",
        )
    )
    pairs = paired["latency"]
    for side in ("in_process", "served"):
        rows.append(_row(f"interleaved latency pairs, {side.replace('_', '-')}", _latency(pairs[side])))
    throughput = paired["throughput"]
    rows.append(
        _row(
            "interleaved throughput rounds (img/s)",
            f"in-process {throughput['in_process_rounds']}, served {throughput['served_rounds']}",
        )
    )
    stream = paired["stream"]
    for side, label in (
        ("served", "StreamPredictions, 1 every-frame subscriber"),
        ("in_process", "in-process loop: cv2.VideoCapture + infer"),
    ):
        runs = ", ".join(f"{r['fps']:.1f}" for r in stream[side]["runs"])
        frames = sum(int(r["frames"]) for r in stream[side]["runs"])
        rows.append(_row(label, f"{stream[side]['fps']:.1f} fps ({frames} frames; rounds: {runs} fps)"))
    for key in ("1", "8"):
        side = paired["fanout"][key]
        runs = side["runs"]
        fps = ", ".join(f"{r['fps']:.1f}" for r in runs)
        frames, dropped = sum(r["frames"] for r in runs), max(r["results_dropped_max"] for r in runs)
        rows.append(
            _row(
                f"fan-out, {key} lossy subscriber(s) on {max(r['pipelines'] for r in runs)} pipeline",
                f"server {side['server_cpu_ms_per_frame']:.1f} ms CPU/frame over {frames} frames "
                f"({fps} fps); results dropped (max) {dropped}",
            )
        )
    warm = memory["warmup"]
    rows.append(_row("server RSS after warm-up", f"{warm['rss_mb']:.1f} MB ({warm['requests']} requests)"))
    for point in memory["checkpoints"]:
        rows.append(
            _row(
                f"server RSS after {point['requests']:,} requests past the warm-up"
                + (" (quick: small count)" if quick else ""),
                f"{point['rss_mb']:.1f} MB; {point['requests_per_s']:.1f} req/s at c={memory['concurrency']}",
            )
        )
    return rows


def _noise_warning(noise: dict[str, Any]) -> list[str]:
    noisy = {k: v for k, v in noise.get("other_processes_share_by_phase", {}).items() if v > NOISY_SHARE}
    if not noisy:
        return []
    phases = ", ".join(f"{label} {share:.0%}" for label, share in noisy.items())
    return [
        f"**Noisy run: other processes used the CPU during some phases ({phases}); those numbers are not a "
        "result. Run it again on an idle machine.**",
        "",
    ]


COMPARED = (
    ("unary_p50_c1", "unary p50 latency, c=1"),
    ("unary_throughput_c4", "unary throughput, c=4"),
    ("unary_throughput_c16", "unary throughput, c=16"),
    ("stream_fps", "stream frames/s, every-frame delivery"),
)


def comparison_reading(measure: dict[str, Any]) -> str:
    """The median per-pair change in words, and whether its 95% confidence interval holds "no change"."""
    change = measure["current_better_by"]
    words = f"current {abs(change):.1%} {'faster' if change >= 0 else 'slower'}"
    if measure["within_noise"] is None:
        return f"{words}; too few pairs to tell noise from a change"
    if measure["within_noise"]:
        return f"{words}: within noise"
    return f"{words}: beyond noise" if change > 0 else f"**{words}: a regression beyond noise**"


def _comparison_section(comparison: dict[str, Any], quick: bool) -> list[str]:
    prev, cur = comparison["previous"], comparison["current"]
    imports = prev["imports"]
    measures = comparison["measures"]
    pairs = ", ".join(f"{measures[key]['pairs']}" for key, _ in COMPARED if key in measures)
    lines = [
        "## Current vs previous server",
        "",
        f"Current: commit {cur['commit']} ({cur['server_source']}). Previous: `{prev['ref']}` = "
        f"{prev['commit'][:12]} ({prev['subject']}), served from a temporary git worktree; "
        f"{imports['visionrpc_modules_from_worktree']} `visionrpc` modules imported from it, none from the "
        f"current checkout. Both running side by side on the same model repository and flags; "
        f"{comparison['cycles']} cycles of alternating short segments ({pairs} pairs per measure, "
        f"{comparison['seconds']:.0f} s). Ratio = current / previous per pair; the median of the ratios, "
        "their spread, and the median's 95% confidence interval (binomial order statistics)."
        + (" Quick mode: a smoke test of the plumbing, not a result." if quick else ""),
        "",
        _row(
            "measure",
            "current",
            f"previous ({prev['ref']})",
            "ratio: median",
            "IQR",
            "min - max",
            "95% CI",
            "server CPU, current vs previous",
            "reading",
        ),
        _row("---", "---:", "---:", "---:", "---", "---", "---", "---", "---"),
    ]
    for key, label in COMPARED:
        if key not in measures:
            continue
        m = measures[key]
        per = m["server_cpu_per"]
        cpu_key = f"server_cpu_ms_per_{per}"
        ci = m["ratio_ci95"]
        lines.append(
            _row(
                f"{label} ({m['unit']})",
                f"{m['current']['value']:.2f}",
                f"{m['previous']['value']:.2f}",
                f"{m['ratio_median']:.3f}",
                f"{m['ratio_q1']:.3f} - {m['ratio_q3']:.3f}",
                f"{m['ratio_min']:.3f} - {m['ratio_max']:.3f}",
                "n/a" if ci is None else f"{ci[0]:.3f} - {ci[1]:.3f}",
                f"{m['current'][cpu_key]:.1f} vs {m['previous'][cpu_key]:.1f} ms/{per} "
                f"= {m['server_cpu_ratio']:.3f} x",
                comparison_reading(m),
            )
        )
    rss = comparison["rss_mb_after"]
    left_out = ", ".join(prev["settings_left_out"]) or "none"
    lines += [
        "",
        f"Server RSS after the comparison: current {rss['current']:.1f} MB, previous "
        f"{rss['previous']:.1f} MB. Previous server ready in {prev['server_ready_s']:.1f} s (modules "
        f"compiled afresh); settings left out (not a flag of both): {left_out}.",
        "",
        "Previous server: `python " + " ".join(prev["argv"][1:]) + "`",
        "",
        *(f"- {example}" for example in imports["examples"]),
        "",
    ]
    return lines


def render_markdown(results: dict[str, Any], targets: Sequence[Target]) -> str:
    settings, quick, noise = results["settings"], results["mode"] != "full", results["noise"]
    title = f"# visionrpc benchmark, {results['mode']} mode"
    lines = [
        title + (" (small counts: a smoke test, not a result)" if quick else ""),
        "",
        f"{results['started_at']}, {results['duration_s']:.0f} s; model `{settings['default_model']}` on "
        f"{results['engine']}, {settings['intra_op_threads']} intra-op threads; commit {results['commit']}.",
        "",
        *_noise_warning(noise),
        "## Targets",
        "",
        _row("target", "measured", "limit", "ratio (<= 1 met)", "result"),
        _row("---", "---", "---", "---:", "---"),
        *(
            _row(t.name, t.measured, t.target, f"{t.ratio:.3f}", "met" if t.met else "**missed**")
            for t in targets
        ),
        "",
        *(_comparison_section(results["comparison"], quick) if "comparison" in results else []),
        "## Measurements",
        "",
        _row("measurement", "value"),
        _row("---", "---"),
        *_measurements(results),
        "",
        "## Machine",
        "",
        _row("", ""),
        _row("---", "---"),
        *(_row(key, value) for key, value in results["machine"].items()),
        _row(
            "load average at start, at end",
            f"{noise['load_average_at_start']}, {noise['load_average_at_end']}",
        ),
        _row("other processes' share of the CPU", f"{noise.get('other_processes_share_of_machine', 'n/a')}"),
        "",
        "Server: `python " + " ".join(results["server_argv"][1:]) + "`",
        "",
    ]
    return "\n".join(lines)


def write_reports(results: dict[str, Any], targets: Sequence[Target], out_dir: Path) -> tuple[Path, Path]:
    """Writes latest.json (every measurement and the targets) and latest.md (the tables) into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "latest.json", out_dir / "latest.md"
    json_path.write_text(json.dumps({**results, "targets": [asdict(t) for t in targets]}, indent=2) + "\n")
    md_path.write_text(render_markdown(results, targets))
    return json_path, md_path
