"""How much the benchmark measures: the full mode for people, the quick mode for CI (seconds on 2 cores)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FULL", "QUICK", "Mode"]


@dataclass(frozen=True, slots=True)
class Mode:
    name: str
    # In-process sweep.
    latency_images: int  # single-image infer calls, one thread
    throughput_images: int  # images per (batch size, threads) configuration, at least one batch per thread
    batch_sizes: tuple[int, ...]
    thread_counts: tuple[int, ...]
    # Unary Infer through gRPC: concurrency -> timed requests (each phase starts with untimed warm-up calls).
    unary_requests: tuple[tuple[int, int], ...]
    png_requests: int  # informational: c=1 with PNG-encoded images (the server decodes them)
    warmup_requests: int  # before "RSS after warm-up", at the highest concurrency
    # RSS checkpoints: Infer requests after the warm-up, sent at the highest concurrency before any other
    # phase (the later phases then run on a server in its steady state).
    memory_checkpoints: tuple[int, int]
    # The targets' interleaved comparisons (paired.py): pairs of short alternating segments.
    latency_pairs: int  # one in-process call + one Infer each
    throughput_pairs: int
    throughput_segment_s: float  # each side's segment (the served one after `throughput_warm_s`)
    throughput_warm_s: float
    stream_pairs: int
    stream_frames: int | None  # frames per stream segment (None: the whole file, 250 frames)
    fanout_pairs: int
    fanout_frames: int | None  # frames per fan-out window (None: to the end of the file)
    cold_starts: int  # fresh server processes timed from exec to SERVING, and their first Infer
    # Current vs previous server (--baseline-ref, compare.py): cycles of one pair of segments per measure
    # (c=1: `compare_latency_segments` pairs per cycle), each segment short, the order flipping per pair.
    compare_cycles: int
    compare_latency_segments: int
    compare_latency_requests: int  # c=1 requests per segment
    compare_throughput: tuple[tuple[int, float], ...]  # (concurrency, measured seconds per segment)
    compare_warm_s: float  # before each throughput segment's window opens (the pipeline fills)
    compare_stream_frames: int | None  # frames per stream segment (None: the whole file)


FULL = Mode(
    name="full",
    latency_images=300,
    throughput_images=160,
    batch_sizes=(1, 2, 4, 8),
    thread_counts=(1, 2, 4),
    unary_requests=((1, 300), (4, 300), (16, 400)),
    png_requests=100,
    warmup_requests=32,
    memory_checkpoints=(1_000, 10_000),
    latency_pairs=300,
    throughput_pairs=16,
    throughput_segment_s=4.0,
    throughput_warm_s=1.0,
    stream_pairs=10,
    stream_frames=None,
    fanout_pairs=4,
    fanout_frames=None,
    cold_starts=3,
    compare_cycles=12,
    compare_latency_segments=2,
    compare_latency_requests=10,
    compare_throughput=((4, 3.0), (16, 4.0)),
    compare_warm_s=1.0,
    compare_stream_frames=None,
)

QUICK = Mode(
    name="quick",
    latency_images=20,
    throughput_images=16,
    batch_sizes=(1, 4),
    thread_counts=(1, 2),
    unary_requests=((1, 20), (4, 24), (16, 32)),
    png_requests=10,
    warmup_requests=16,
    memory_checkpoints=(100, 300),
    latency_pairs=20,
    throughput_pairs=2,
    throughput_segment_s=0.6,
    throughput_warm_s=0.4,
    stream_pairs=2,
    stream_frames=30,
    fanout_pairs=1,
    fanout_frames=30,
    cold_starts=1,
    compare_cycles=2,
    compare_latency_segments=1,
    compare_latency_requests=4,
    compare_throughput=((4, 0.5), (16, 0.6)),
    compare_warm_s=0.4,
    compare_stream_frames=20,
)
