"""What tracking and analytics cost per frame, against detection alone, on bikes.mp4.

    python -m bench.analytics              # ~1 minute on 2 cores; prints the table bench/ANALYTICS.md keeps
    python -m bench.analytics --frames 30 --rounds 2   # seconds: a smoke test

The clip's first frames are decoded once into memory; then rounds alternate between the two sides, the order
flipping every round so neither always goes first (the machine's speed drifts): "detection" runs each frame
through the server's own predictor (Predictor.infer, as a stream pipeline calls it), "detection + analytics"
does the same and hands each prediction to a fresh StreamAnalyzer (ByteTrack, two zones, two lines), as the
pipeline does. Ratio = with analytics / detection alone, per round, and its median. The analyzer's own time
per frame is measured inside the second side too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from visionrpc.server.analytics.analyzer import StreamAnalyzer
from visionrpc.server.analytics.types import Line, Point, StreamAnalytics, Tracking, Zone
from visionrpc.server.domain import ChannelOrder, InferOptions
from visionrpc.server.predictor import InputImage, Predictor

from . import assets
from .inprocess import Pixels, loaded_predictor
from .server_process import server_config

__all__ = ["SPEC", "main"]

# bikes.mp4 is 640x272: a zone over each half and lines across the middle both ways.
SPEC = StreamAnalytics(
    tracking=Tracking(enabled=True),
    zones=(
        Zone("left", (Point(0, 0), Point(320, 0), Point(320, 272), Point(0, 272))),
        Zone("right", (Point(320, 0), Point(640, 0), Point(640, 272), Point(320, 272))),
    ),
    lines=(Line("middle", Point(320, 0), Point(320, 272)), Line("across", Point(0, 200), Point(640, 200))),
)


def _frames(count: int) -> list[Pixels]:
    capture = cv2.VideoCapture(str(assets.asset(assets.VIDEO)))
    frames: list[Pixels] = []
    while len(frames) < count:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(np.asarray(frame, dtype=np.uint8))
    capture.release()
    return frames


def _side(predictor: Predictor, frames: Sequence[Pixels], analytics: bool) -> tuple[float, float]:
    """(seconds per frame in all, seconds per frame in the analyzer) over one pass of `frames`."""
    options = predictor.resolve_options(InferOptions())
    analyzer = StreamAnalyzer(SPEC) if analytics else None
    analyzing = 0.0
    start = time.perf_counter()
    for number, pixels in enumerate(frames):
        (prediction,) = predictor.infer([InputImage(pixels, ChannelOrder.BGR)], options).predictions
        if analyzer is not None:
            began = time.perf_counter()
            analyzer.analyze(0, number, number * 40.0, time.time(), prediction)
            analyzing += time.perf_counter() - began
    total = time.perf_counter() - start
    return total / len(frames), analyzing / len(frames)


def measure(predictor: Predictor, frames: Sequence[Pixels], rounds: int) -> dict[str, Any]:
    _side(predictor, frames[:5], analytics=True)  # warm-up: engine, tracker import, caches
    plain: list[float] = []
    tracked: list[float] = []
    analyzer_only: list[float] = []
    for round_ in range(rounds):
        for analytics in (False, True) if round_ % 2 == 0 else (True, False):
            per_frame, analyzing = _side(predictor, frames, analytics)
            if analytics:
                tracked.append(per_frame)
                analyzer_only.append(analyzing)
            else:
                plain.append(per_frame)
    ratios = [t / p for t, p in zip(tracked, plain, strict=True)]
    return {
        "frames": len(frames),
        "rounds": rounds,
        "detection_ms_per_frame": round(statistics.median(plain) * 1000, 2),
        "with_analytics_ms_per_frame": round(statistics.median(tracked) * 1000, 2),
        "analyzer_ms_per_frame": round(statistics.median(analyzer_only) * 1000, 3),
        "ratio_median": round(statistics.median(ratios), 4),
        "ratios": [round(r, 4) for r in ratios],
    }


def render(result: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"bikes.mp4, first {result['frames']} frames, {result['rounds']} rounds per side, alternating",
            "",
            "| side | ms/frame (median of rounds) |",
            "| --- | --- |",
            f"| detection alone | {result['detection_ms_per_frame']} |",
            f"| detection + tracking, 2 zones, 2 lines | {result['with_analytics_ms_per_frame']} |",
            f"| of which the analyzer | {result['analyzer_ms_per_frame']} |",
            "",
            f"ratio (with / without), median of rounds: {result['ratio_median']}",
            f"per round: {result['ratios']}",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.analytics", description="the cost of tracking and analytics"
    )
    parser.add_argument("--frames", type=int, default=100, help="frames of bikes.mp4 per pass (default 100)")
    parser.add_argument("--rounds", type=int, default=4, help="passes per side (default 4)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    ns = parser.parse_args(argv)
    frames = _frames(ns.frames)
    with tempfile.TemporaryDirectory(prefix="visionrpc-bench-analytics-") as root:
        config = server_config({"model_repository": Path(root), "cache_dir": assets.model_cache_dir()})
        with loaded_predictor(config) as predictor:
            result = measure(predictor, frames, ns.rounds)
    print(render(result))
    if ns.json is not None:
        ns.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
