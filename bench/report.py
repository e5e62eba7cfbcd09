"""The JSON and Markdown reports of a run (targets: targets.py), and the agreement of repeated runs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .stats import agreement
from .targets import Target, evaluate_targets

__all__ = [
    "COMPARED",
    "Target",
    "comparison_reading",
    "evaluate_targets",
    "render_markdown",
    "render_repeat",
    "repeat_agreement",
    "verdict",
    "write_reports",
]

NOISY_SHARE = 0.05  # other processes' share of the machine's CPU above which a run is flagged as noisy


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
    for side, key in (("in_process", "images_per_s"), ("served", "requests_per_s")):
        values = ", ".join(f"{float(r[key]):.1f}" for r in throughput[side]["segments"])
        rows.append(_row(f"throughput segments, {side.replace('_', '-')} (img/s, in order)", f"{values}"))
    stream = paired["stream"]
    for side, label in (
        ("served", "StreamPredictions, 1 every-frame subscriber"),
        ("in_process", "in-process loop: cv2.VideoCapture + infer"),
    ):
        runs = ", ".join(f"{r['fps']:.1f}" for r in stream[side]["segments"])
        frames = sum(int(r["frames"]) for r in stream[side]["segments"])
        rows.append(
            _row(label, f"{stream[side]['fps_total']:.1f} fps ({frames} frames; segments: {runs} fps)")
        )
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
    shm = results.get("shared_memory", {"measured": False, "reason": "not run"})
    if shm["measured"]:
        rows.append(
            _row("interleaved latency pairs, shared-memory input", _latency(shm["latency"]["served"]))
        )
    else:
        rows.append(_row("shared-memory input", f"not measured: {shm['reason']}"))
    cold = results.get("cold_start")
    if cold is not None:
        rows.append(
            _row(
                f"cold start: exec -> SERVING on the health service (median of {cold['starts']})",
                f"{cold['exec_to_serving_s']:.2f} s; RSS then {cold['rss_mb_at_serving']:.1f} MB",
            )
        )
        rows.append(
            _row(
                "cold start: first Infer on a fresh channel (with the connection), then the second",
                f"{cold['first_request_ms']:.1f} ms, then {cold['second_request_ms']:.1f} ms",
            )
        )
    counter = results.get("instructions", {"available": False, "reason": "not probed"})
    if counter["available"]:
        rows.append(
            _row(
                "user-space instructions per image (perf stat)",
                f"in-process {counter.get('in_process_per_image')}, server {counter.get('served_per_image')}",
            )
        )
    else:
        rows.append(_row("instruction counts", f"not measured: {counter['reason']}"))
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


def verdict(target: Target) -> str:
    """met / missed / not measured, and whether the run could tell (the limit outside the interval)."""
    if target.met is None:
        return "not measured"
    word = "met" if target.met else "**missed**"
    return word + ("" if target.decided else " *(within the interval)*")


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
        _row("target", "measured", "limit", "spread", "ratio (<= 1 met)", "result"),
        _row("---", "---", "---", "---", "---:", "---"),
        *(_row(t.name, t.measured, t.target, t.spread, f"{t.ratio:.3f}", verdict(t)) for t in targets),
        "",
        "Each ratio is the median over pairs of short alternating segments (in-process, served, the order "
        "flipping per pair); a result marked *(within the interval)* has the limit inside the median's 95% "
        "interval: this run cannot tell met from missed.",
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


def repeat_agreement(runs: Sequence[Sequence[Target]], tolerance: float = 0.03) -> list[dict[str, Any]]:
    """Per target, the first two runs' figures side by side: whether each ratio agrees within
    `tolerance` (relative to the first run), and whether the target held in both."""
    first, second = runs[0], runs[1]
    rows = []
    for a, b in zip(first, second, strict=True):
        row: dict[str, Any] = {
            "name": a.name,
            "met": [a.met, b.met],
            "held_in_both": a.met is True and b.met is True,
        }
        if a.figure is not None and b.figure is not None:
            row |= agreement(a.figure, b.figure, tolerance)
        rows.append(row)
    return rows


def render_repeat(rows: Sequence[dict[str, Any]], tolerance: float = 0.03) -> str:
    """The two-run table: every ratio of run 1 against run 2."""
    ratios = [row for row in rows if "agree" in row]
    agree = all(row["agree"] for row in ratios)
    lines = [
        "# visionrpc benchmark, two runs in a row",
        "",
        f"Every ratio within ±{tolerance:.0%} of the first run: **{'yes' if agree else 'no'}** "
        f"({sum(row['agree'] for row in ratios)} of {len(ratios)} ratios). Each run's own report: "
        "run-1/latest.md, run-2/latest.md. For c=1 latency the figure compared is the median per-pair ratio "
        "served / in-process (the target itself is on the difference in ms).",
        "",
        _row("target", "run 1", "run 2", "change", "within ±3%", "met: run 1, run 2"),
        _row("---", "---:", "---:", "---:", "---", "---"),
    ]
    for row in rows:
        met = ", ".join("n/a" if m is None else ("met" if m else "missed") for m in row["met"])
        if "agree" in row:
            lines.append(
                _row(
                    row["name"],
                    f"{row['first']:.3f}",
                    f"{row['second']:.3f}",
                    f"{row['change']:+.1%}",
                    "yes" if row["agree"] else "**no**",
                    met,
                )
            )
        else:
            lines.append(_row(row["name"], "", "", "", "(not a ratio)", met))
    return "\n".join(lines) + "\n"
