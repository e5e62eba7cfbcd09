"""The transport floor: what gRPC itself adds to a call of this size here, around the same engine work.

A bare grpc.aio server built like visionrpc's (`grpc_server(config)`: the same channel arguments and RPC
limit, the same InferRequest/InferResponse (de)serialisation) whose async Infer hands the model's engine, on
one fixed preprocessed tensor, to a worker pool of the server's size and awaits it — the one thread hop any
asyncio server needs for CPU work, as visionrpc's Infer makes it — then answers a canned response of the real
size: no decoding, preprocessing, scheduler, postprocessing or servicer code. The engine keeps the cores busy
exactly as in the real server (an idle handler, `time.sleep`, measures more: idle virtual CPUs wake up
slower). Each response carries the engine's own time in `timings.total_ms`, so the floor is, per request,
the client's latency minus that: transport, HTTP/2, protobuf, the event loop and the hop to the worker and
back. The real server's "outside the pipeline" share is measured the same way
(`LoadResult.outside_pipeline_ms`); the difference is what visionrpc's servicer adds.

    python -m bench.floor --host 127.0.0.1 --port P --model-repository ... --response response.bin
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from visionrpc.engines import Engine
from visionrpc.server.app import grpc_server
from visionrpc.server.config import ServerConfig, add_server_arguments
from visionrpc.server.domain import ChannelOrder
from visionrpc.server.processing import preprocess, stack_batch
from visionrpc.v1 import inference_pb2

from . import assets
from .inprocess import loaded_predictor
from .server_process import ServerProcess
from .unary import run_load

__all__ = ["FloorServer", "measure_floor"]

_SERVICE = "visionrpc.v1.InferenceService"


async def _serve(engine: Engine, inputs: dict[str, Any], response: bytes, config: ServerConfig) -> None:
    canned = inference_pb2.InferResponse.FromString(response)
    workers = ThreadPoolExecutor(max_workers=config.cpu_workers, thread_name_prefix="floor-worker")

    def run_engine() -> float:
        start = time.perf_counter()
        engine.infer(inputs)
        return (time.perf_counter() - start) * 1000.0

    async def infer(
        request: inference_pb2.InferRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> inference_pb2.InferResponse:
        engine_ms = await asyncio.wrap_future(workers.submit(run_engine))
        answer = inference_pb2.InferResponse()
        answer.CopyFrom(canned)
        answer.predictions[0].timings.total_ms = engine_ms
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
    server = grpc_server(config)  # the very server visionrpc builds, before its services are added
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(config.address)
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0)
    workers.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    """`visionrpc serve`'s own flags (so the model loads as the server loads it) plus `--response`."""
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description="the transport floor's server")
    add_server_arguments(parser)
    parser.add_argument("--response", type=Path, required=True, help="a serialised InferResponse to answer")
    ns = parser.parse_args(argv)
    config = ServerConfig.from_namespace(ns)
    with loaded_predictor(config) as predictor:
        image = assets.load_image(assets.IMAGES[0])
        tensor, _ = preprocess(image, ChannelOrder.BGR, predictor.model.manifest)
        engine = predictor.engine
        inputs = {engine.inputs[0].name: stack_batch([tensor])}
        asyncio.run(_serve(engine, inputs, ns.response.read_bytes(), config))
    return 0


class FloorServer(ServerProcess):
    """`python -m bench.floor` on a free loopback port (started, stopped and logged like the real server)."""

    def __init__(self, settings: Mapping[str, Any], response: bytes, work_dir: Path) -> None:
        response_path = work_dir / "floor-response.bin"
        response_path.write_bytes(response)
        extra = ["--response", str(response_path)]
        super().__init__(settings, work_dir / "floor.log", command=("bench.floor",), extra=extra)


def measure_floor(
    settings: Mapping[str, Any], requests: Sequence[bytes], response: bytes, count: int, work_dir: Path
) -> dict[str, Any]:
    """c=1 through the floor server: the same request bytes and load generator as the served phases."""
    with FloorServer(settings, response, work_dir) as floor:
        floor.wait_listening(timeout_s=300.0)
        load = run_load(floor.address, requests, concurrency=1, count=count)
        status = floor.stop()
    if status != 0:
        raise RuntimeError(f"the floor server exited with {status}:\n{floor.log_tail()}")
    summary = load.summary()
    return {
        "requests": count,
        "latency": summary["latency"],
        "engine_p50_ms": summary["server_pipeline_p50_ms"]["total_ms"],
        "outside_handler_p50_ms": summary["outside_pipeline_p50_ms"],
    }


if __name__ == "__main__":
    sys.exit(main())
