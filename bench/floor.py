"""The transport floor: what gRPC itself costs a unary call of this size here, with no visionrpc code.

A server process built like visionrpc's (grpcio's sync server, the same thread pool size and channel
arguments, the same InferRequest/InferResponse (de)serialisation) whose Infer does nothing but wait for as
long as the model takes in-process, then answers a canned response of the real size. Each response carries
the handler's own measured wait in `timings.total_ms`, so the floor is, per request, the client's latency
minus the handler's time: transport, HTTP/2, protobuf and grpcio's thread hand-offs, after an idle wait like
the one inference causes. The served latency's own "outside the pipeline" share is measured the same way
(`LoadResult.outside_pipeline_ms`); the difference between the two is what visionrpc's servicer adds.

    python -m bench.floor --port 50051 --wait-ms 28 --response response.bin   # what the benchmark starts
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from visionrpc.server.app import grpc_options
from visionrpc.server.config import ServerConfig
from visionrpc.v1 import inference_pb2

from .server_process import ServerProcess, server_config
from .unary import run_load

__all__ = ["FloorServer", "measure_floor"]

_SERVICE = "visionrpc.v1.InferenceService"


def _serve(port: int, wait_s: float, response: inference_pb2.InferResponse, config: ServerConfig) -> None:
    def infer(
        request: inference_pb2.InferRequest, context: grpc.ServicerContext
    ) -> inference_pb2.InferResponse:
        start = time.perf_counter()
        time.sleep(wait_s)  # releases the GIL, as ONNX Runtime does while it computes
        answer = inference_pb2.InferResponse()
        answer.CopyFrom(response)
        answer.predictions[0].timings.total_ms = (time.perf_counter() - start) * 1000.0
        return answer

    handler = grpc.method_handlers_generic_handler(
        _SERVICE,
        {
            "Infer": grpc.unary_unary_rpc_method_handler(
                infer,
                request_deserializer=inference_pb2.InferRequest.FromString,
                response_serializer=inference_pb2.InferResponse.SerializeToString,
            )
        },
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.worker_threads),
        options=grpc_options(config),
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--wait-ms", type=float, required=True)
    parser.add_argument("--response", type=Path, required=True, help="a serialised InferResponse to answer")
    ns = parser.parse_args(argv)
    response = inference_pb2.InferResponse.FromString(ns.response.read_bytes())
    _serve(ns.port, ns.wait_ms / 1000.0, response, server_config({}))
    return 0


class FloorServer(ServerProcess):
    """`python -m bench.floor` on a free loopback port (started, stopped and logged like the real server)."""

    def __init__(self, wait_ms: float, response: bytes, work_dir: Path) -> None:
        response_path = work_dir / "floor-response.bin"
        response_path.write_bytes(response)
        extra = ["--wait-ms", f"{wait_ms:.3f}", "--response", str(response_path)]
        super().__init__({}, work_dir / "floor.log", module="bench.floor", extra=extra)


def measure_floor(
    wait_ms: float, requests: Sequence[bytes], response: bytes, count: int, work_dir: Path
) -> dict[str, Any]:
    """c=1 through the floor server: the same request bytes and load generator as the served phases."""
    with FloorServer(wait_ms, response, work_dir) as floor:
        floor.wait_listening()
        load = run_load(floor.address, requests, concurrency=1, count=count)
        status = floor.stop()
    if status != 0:
        raise RuntimeError(f"the floor server exited with {status}:\n{floor.log_tail()}")
    summary = load.summary()
    return {
        "handler_wait_ms": round(wait_ms, 3),
        "requests": count,
        "latency": summary["latency"],
        "outside_handler_p50_ms": summary["outside_pipeline_p50_ms"],
    }


if __name__ == "__main__":
    sys.exit(main())
