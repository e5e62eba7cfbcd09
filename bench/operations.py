"""What metrics and tracing cost: the same server code with them on and off, side by side, interleaved.

    python -m bench.operations            # ~8 minutes; writes bench/results/operations.{json,md}
    python -m bench.operations --quick    # seconds: a smoke test

Three server processes of the current checkout run at once on the same model repository: "off" (no
--metrics-port, no --tracing-endpoint), "metrics" (--metrics-port, scraped every second by a thread of this
process, as Prometheus would, only faster), and "metrics + tracing" (also --tracing-endpoint to an OTLP
collector in this process that receives and drops spans, every call sampled). Each "on" server is compared
with "off" the way `--baseline-ref` compares two commits (compare.py): short alternating segments of c=1
latency, c=4 and c=16 throughput and an every-frame stream, and the median of the per-pair ratios with its
95% confidence interval. Ratio = on / off.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from . import assets, procstat
from .compare import Side, compare_servers
from .modes import FULL, QUICK, Mode
from .server_process import ServerProcess, free_port
from .unary import raw_requests

__all__ = ["main"]

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
MEASURES = ("unary_p50_c1", "unary_throughput_c4", "unary_throughput_c16", "stream_fps")


class _Sink(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP collector that counts spans and keeps none."""

    def __init__(self) -> None:
        self.spans = 0

    def Export(  # noqa: N802 - the generated base class fixes the name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@contextmanager
def _collector() -> Iterator[tuple[str, _Sink]]:
    sink = _Sink()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", sink
    finally:
        server.stop(None)


@contextmanager
def _scraper(port: int, every_s: float = 1.0) -> Iterator[list[int]]:
    """Fetches /metrics every `every_s` seconds; yields the list of response sizes."""
    sizes: list[int] = []
    stop = threading.Event()

    def scrape() -> None:
        while not stop.wait(every_s):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                sizes.append(len(response.read()))

    thread = threading.Thread(target=scrape, name="bench-scraper", daemon=True)
    thread.start()
    try:
        yield sizes
    finally:
        stop.set()
        thread.join(15)


def run(mode: Mode) -> dict[str, Any]:
    requests = raw_requests([assets.load_image(name) for name in assets.IMAGES])
    video = assets.asset(assets.VIDEO)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="visionrpc-ops-") as tmp, _collector() as (endpoint, sink):
        root = Path(tmp)
        (root / "media").mkdir()
        shutil.copyfile(video, root / "media" / video.name)
        base = {
            "model_repository": root / "models",
            "cache_dir": assets.model_cache_dir(),
            "media_root": root / "media",
            "pipeline_linger_s": 0.5,
        }
        metrics_port, traced_metrics_port = free_port(), free_port()
        variants = {
            "off": base,
            "metrics": base | {"metrics_port": metrics_port},
            "metrics + tracing": base | {"metrics_port": traced_metrics_port, "tracing_endpoint": endpoint},
        }
        servers = {
            name: ServerProcess(s, root / f"{name.replace(' ', '')}.log") for name, s in variants.items()
        }
        try:
            for server in servers.values():
                server.wait_ready()
            results: dict[str, Any] = {
                "mode": mode.name,
                "machine": procstat.machine_info(),
                "comparisons": {},
            }
            off = servers["off"]
            for name, port in (("metrics", metrics_port), ("metrics + tracing", traced_metrics_port)):
                on = servers[name]
                with _scraper(port) as scrapes:
                    out = compare_servers(
                        Side("current", on.address, on.pid),
                        Side("previous", off.address, off.pid),
                        requests,
                        video.name,
                        mode,
                        0.5,
                    )
                out["scrapes"] = len(scrapes)
                out["scrape_bytes"] = max(scrapes, default=0)
                results["comparisons"][name] = out
            results["spans_exported"] = sink.spans
        finally:
            for server in servers.values():
                server.stop()
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


def report(results: dict[str, Any]) -> str:
    lines = [
        f"# Metrics and tracing: on vs off ({results['mode']} mode, {results['seconds']:.0f} s)",
        "",
        "Same code, three server processes side by side; ratio = on / off per alternating pair, median and "
        "its 95% confidence interval. Throughput and fps: > 1 is faster with it on; latency: > 1 is slower.",
        "",
        "| on | measure | on | off | ratio: median | 95% CI | server CPU on vs off | within noise |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for name, out in results["comparisons"].items():
        for measure in MEASURES:
            m = out["measures"][measure]
            ci = m["ratio_ci95"]
            lines.append(
                f"| {name} | {measure} ({m['unit']}) | {m['current']['value']} | {m['previous']['value']} | "
                f"{m['ratio_median']:.3f} | {'-' if ci is None else f'{ci[0]:.3f} - {ci[1]:.3f}'} | "
                f"{m['server_cpu_ratio']:.3f} x | {m['within_noise']} |"
            )
    machine = results["machine"]
    scrapes = {name: out["scrapes"] for name, out in results["comparisons"].items()}
    lines += [
        "",
        f"/metrics scraped {scrapes} times (every second); spans exported: {results['spans_exported']}. "
        f"Machine: {machine.get('cpu_model')}, {machine.get('usable_cores')} cores.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.operations", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ns = parser.parse_args(argv)
    mode = QUICK if ns.quick else replace(FULL, compare_cycles=6)  # 6 pairs: the fewest with a 95% interval
    results = run(mode)
    ns.out.mkdir(parents=True, exist_ok=True)
    (ns.out / "operations.json").write_text(json.dumps(results, indent=1, default=str))
    text = report(results)
    (ns.out / "operations.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
