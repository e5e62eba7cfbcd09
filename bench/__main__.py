"""`python -m bench [--quick] [--repeat 2] [--out DIR]`: run the benchmark (twice in a row with --repeat 2:
does every ratio agree within ±3%?), write latest.json and latest.md."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .modes import FULL, QUICK, Mode
from .report import COMPARED, NOISY_SHARE, comparison_reading, render_repeat, repeat_agreement, write_reports
from .run import run_benchmark
from .targets import Target

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Holds the visionrpc server to the speed of its own in-process pipeline, in one run.",
    )
    parser.add_argument("--quick", action="store_true", help="small counts (seconds): a smoke test for CI")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"report folder (default {DEFAULT_OUT})"
    )
    parser.add_argument("--model", help="model to measure (default: the server's default, yolov3-tiny-coco)")
    parser.add_argument("--intra-op-threads", type=int, help="ONNX Runtime threads (default: the server's)")
    parser.add_argument(
        "--baseline-ref",
        metavar="REF",
        help="also measure the current server against the server at git REF (e.g. 7aad327), both running, "
        "in alternating segments; REF is checked out into a temporary worktree (default: no comparison)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        choices=(1, 2),
        default=1,
        help="2: run the whole benchmark twice in a row and report whether every ratio agrees within 3%% "
        "(each run in OUT/run-1 and OUT/run-2, the agreement in OUT/repeat.md and repeat.json)",
    )
    ns = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the server process is stopped and the temporary folder removed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings: dict[str, Any] = {}
    if ns.model:
        settings["default_model"] = ns.model
    if ns.intra_op_threads is not None:
        settings["intra_op_threads"] = ns.intra_op_threads
    mode = QUICK if ns.quick else FULL
    if ns.repeat == 1:
        _run_once(mode, settings, ns.baseline_ref, ns.out)
        return 0
    runs = []
    for i in (1, 2):
        print(f"run {i} of 2")
        runs.append(_run_once(mode, settings, ns.baseline_ref, ns.out / f"run-{i}"))
    rows = repeat_agreement(runs)
    (ns.out / "repeat.json").write_text(json.dumps(rows, indent=2) + "\n")
    (ns.out / "repeat.md").write_text(render_repeat(rows))
    for row in rows:
        if "agree" in row:
            agree = "agree " if row["agree"] else "DIFFER"
            print(
                f"{agree} {row['name']}: {row['first']:.3f} then {row['second']:.3f} ({row['change']:+.1%})"
            )
    print(f"wrote {ns.out / 'repeat.md'}")
    return 0


def _run_once(mode: Mode, settings: dict[str, Any], baseline_ref: str | None, out: Path) -> list[Target]:
    results, targets = run_benchmark(mode, settings, baseline_ref)
    json_path, md_path = write_reports(results, targets, out)
    for target in targets:
        result = "n/a   " if target.met is None else "met   " if target.met else "MISSED"
        print(f"{result} {target.name}: {target.measured} (target {target.target}; {target.spread})")
    if "comparison" in results:
        measures = results["comparison"]["measures"]
        for key, label in COMPARED:
            m = measures[key]
            print(
                f"vs {baseline_ref}: {label}: {m['current']['value']:.2f} vs {m['previous']['value']:.2f} "
                f"{m['unit']}, median pair ratio {m['ratio_median']:.3f} ({comparison_reading(m)})"
            )
    share = results["noise"].get("other_processes_share_of_machine", 0.0)
    if share > NOISY_SHARE:
        print(
            f"warning: other processes used {share:.0%} of the machine's CPU during the run; rerun when idle"
        )
    print(f"wrote {json_path} and {md_path}")
    return targets


if __name__ == "__main__":
    sys.exit(main())
