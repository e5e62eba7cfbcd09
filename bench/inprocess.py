"""The baseline: the server's own pipeline (Predictor.infer: preprocess -> batch scheduler -> engine ->
decode), no gRPC.

The predictor comes from the same model manager the server builds (`build_model_manager(config)`): same model
repository, engine selection, providers, intra-op threads, batching and warm-up. `infer` is the one inference
path the servicers use too, in two halves there (`start` in a worker thread, `finish` after the batch); here
both run in the calling thread, and on an idle engine the batch runs in that thread as well.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from visionrpc.server.app import build_model_manager
from visionrpc.server.config import ServerConfig
from visionrpc.server.domain import ChannelOrder, InferOptions
from visionrpc.server.models.repository import ModelId
from visionrpc.server.predictor import InputImage, Predictor
from visionrpc.server.processing import DecodeOptions

from .stats import TIMING_FIELDS, latency_summary, median_timings

__all__ = ["Baseline", "Pixels", "loaded_predictor"]

Pixels = npt.NDArray[np.uint8]


@contextmanager
def loaded_predictor(config: ServerConfig) -> Iterator[Predictor]:
    """The default model loaded and warmed up exactly as the server does it; closed on exit."""
    manager = build_model_manager(config)
    try:
        with manager.acquire(ModelId.parse(config.default_model)) as predictor:
            yield predictor
    finally:
        manager.close()


@dataclass
class Baseline:
    predictor: Predictor
    images: Sequence[Pixels]  # BGR, used round-robin

    def __post_init__(self) -> None:
        self.options: DecodeOptions = self.predictor.resolve_options(InferOptions())  # the model's defaults
        self.best: dict[str, Any] = {"batch": 1, "threads": 1}  # the sweep's winner, once it ran

    def _inputs(self, start: int, count: int) -> list[InputImage]:
        n = len(self.images)
        return [InputImage(self.images[(start + i) % n], ChannelOrder.BGR) for i in range(count)]

    def predict_one(self, index: int) -> None:
        """One single-image infer of image `index` (round-robin)."""
        self.predictor.infer(self._inputs(index, 1), self.options)

    def latency(self, count: int) -> dict[str, Any]:
        """Single-image infer calls one after another on one thread, images alternating; also the median
        of the pipeline's own step timings."""
        self.predictor.infer(self._inputs(0, 1), self.options)
        samples, timings = [], []
        for i in range(count):
            inputs = self._inputs(i, 1)
            start = time.perf_counter()
            (prediction,) = self.predictor.infer(inputs, self.options).predictions
            samples.append(time.perf_counter() - start)
            timings.append({name: float(getattr(prediction.timings, name)) for name in TIMING_FIELDS})
        return {**latency_summary(samples), "pipeline_p50_ms": median_timings(timings)}

    def throughput(self, batch: int, threads: int, images: int) -> dict[str, Any]:
        """Images per second with `threads` threads each calling infer on batches of `batch` images."""
        calls_per_thread = max(1, -(-images // (batch * threads)))  # ceil
        self.predictor.infer(self._inputs(0, batch), self.options)  # first run of this batch shape
        barrier = threading.Barrier(threads + 1)
        errors: list[BaseException] = []

        def work(offset: int) -> None:
            barrier.wait()
            try:
                for call in range(calls_per_thread):
                    self.predictor.infer(self._inputs(offset + call * batch, batch), self.options)
            except BaseException as exc:  # reported below, never swallowed
                errors.append(exc)

        workers = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(threads)]
        for worker in workers:
            worker.start()
        barrier.wait()
        start, cpu = time.perf_counter(), time.process_time()
        for worker in workers:
            worker.join()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        if errors:
            raise errors[0]
        total = calls_per_thread * batch * threads
        return {
            "batch": batch,
            "threads": threads,
            "images": total,
            "seconds": round(elapsed, 3),
            "images_per_s": round(total / elapsed, 2),
            "cpu_s": round(cpu, 4),  # this process, all threads: the timed calls only
        }

    def best_throughput(
        self, batches: Sequence[int], thread_counts: Sequence[int], images: int
    ) -> dict[str, Any]:
        tried = [self.throughput(b, t, images) for b in batches for t in thread_counts]
        self.best = max(tried, key=lambda row: float(row["images_per_s"]))
        return {"best": self.best, "tried": tried}

    def video_loop(self, path: Path, max_frames: int | None) -> dict[str, float]:
        """The in-process stream: cv2.VideoCapture then infer, frame after frame, from opening the file."""
        start, cpu = time.perf_counter(), time.process_time()
        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            raise OSError(f"OpenCV cannot open {path}")
        frames = 0
        try:
            while max_frames is None or frames < max_frames:
                ok, frame = capture.read()
                if not ok:
                    break
                pixels = np.asarray(frame, dtype=np.uint8)
                self.predictor.infer([InputImage(pixels, ChannelOrder.BGR)], self.options)
                frames += 1
        finally:
            capture.release()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        if frames == 0:
            raise OSError(f"no frame could be read from {path}")
        return {
            "frames": float(frames),
            "seconds": round(elapsed, 3),
            "fps": round(frames / elapsed, 2),
            "cpu_s": round(cpu, 4),
        }
