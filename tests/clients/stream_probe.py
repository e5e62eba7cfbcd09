"""The Python client's stream probe: one subscription printed as JSON lines, resumed across breaks.

    python tests/clients/stream_probe.py --addresses HOST:PORT[,HOST:PORT] (--path P | --url U)
        [--max-fps F] [--every-frame] [--duration-s S]

The Go (clients/go/examples/streamprobe) and Node (clients/node/examples/streamprobe.ts) probes take the same
flags and print the same lines, so tests/clients/test_resume.py holds all three clients to one table.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading

from visionrpc.client import Client, StreamFrame, StreamStatus, VisionRpcError


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--addresses", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--path")
    source.add_argument("--url")
    parser.add_argument("--max-fps", type=float)
    parser.add_argument("--every-frame", action="store_true")
    parser.add_argument("--duration-s", type=float)
    args = parser.parse_args()
    addresses = args.addresses.split(",")
    # Several servers: gRPC's ipv4: list, pick_first (the default policy) tries them in order.
    target = addresses[0] if len(addresses) == 1 else "ipv4:" + ",".join(addresses)
    with Client(target) as client:
        stream = client.stream(
            [args.path or args.url], max_fps=args.max_fps, every_frame_delivery=args.every_frame
        )
        if args.duration_s:
            threading.Timer(args.duration_s, stream.cancel).start()
        try:
            for event in stream:
                emit(line(event))
        except VisionRpcError as exc:
            emit({"kind": "error", "code": exc.code.name, "reason": exc.reason, "message": exc.message})
            return 1
    emit({"kind": "end"})
    return 0


def line(event: StreamFrame | StreamStatus) -> dict[str, object]:
    if isinstance(event, StreamFrame):
        return {
            "kind": "frame",
            "stream_id": event.stream_id,
            "cursor": event.cursor,
            "source_index": event.source_index,
            "sequence_number": event.sequence_number,
        }
    out: dict[str, object] = {
        "kind": "status",
        "event": event.event.name,
        "stream_id": event.stream_id,
        "cursor": event.cursor,
    }
    if event.resume is not None:
        out.update(
            outcome=event.resume.outcome.upper(),
            previous_stream_id=event.resume.previous_stream_id,
            messages_lost=event.resume.messages_lost,
            downtime_ms=event.resume.downtime_s * 1000.0,
        )
    return out


def emit(record: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
