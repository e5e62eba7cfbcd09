"""`visionrpc stream`: subscribe to a server-side video pipeline and print its results as they arrive.

    visionrpc stream clips/bikes.mp4 --json          one JSON object per line (JSON Lines), one per message
    visionrpc stream rtsp://cam/live --max-fps 5     human-readable lines until Ctrl-C
    visionrpc stream --pipeline bikes-gate           watch a pipeline of the server's pipelines file

File paths are resolved by the server below its media root; URLs and device indexes (digits) pass as they are.
"""

from __future__ import annotations

import argparse
import sys

from visionrpc.client import StreamEvents, StreamFrame, StreamStatus

from .cli_common import EXIT_OK, CommandAdder, UsageError, client_for, parse_classes, write_json

__all__ = ["add_stream_command"]


def add_stream_command(commands: CommandAdder, parents: list[argparse.ArgumentParser]) -> None:
    """Adds `stream` to the `visionrpc` commands; `parents` carry the client flags (--address, --json...)."""
    stream = commands.add_parser(
        "stream",
        parents=parents,
        help="subscribe to predictions on a video source",
        description="Stream predictions for video files (below the server's media root), URLs or devices.",
    )
    stream.add_argument("sources", nargs="*", metavar="SOURCE", help="path, URL, or device index")
    stream.add_argument("--stream-id", help="join a running stream by id instead of naming sources")
    stream.add_argument(
        "--pipeline", metavar="NAME", help="watch a declared pipeline (see `visionrpc pipelines list`)"
    )
    stream.add_argument("--model", metavar="ID", help="'name' or 'name/version' (default: the server's)")
    stream.add_argument("--max-fps", type=float, metavar="F", help="cap on processed frames per second")
    stream.add_argument("--confidence", type=float, metavar="F", help="minimum confidence in [0, 1]")
    stream.add_argument("--classes", metavar="A,B", help="keep only these classes, by name or id")
    stream.add_argument(
        "--every-frame", action="store_true", help="receive every result (single subscriber, files only)"
    )
    stream.add_argument(
        "--events",
        action="store_true",
        help="receive only analytics events (zone entries and exits, line crossings) and status messages",
    )
    stream.set_defaults(handler=_cmd_stream)


def _cmd_stream(ns: argparse.Namespace) -> int:
    if not ns.sources and not ns.stream_id and not ns.pipeline:
        raise UsageError("give at least one SOURCE, or --stream-id, or --pipeline")
    sources: list[str | int] = [int(s) if s.isdigit() else s for s in ns.sources]
    # A stream has no deadline unless --timeout asks for one: it lasts as long as its source.
    with client_for(ns) as client:
        subscription = client.stream(
            sources,
            model=ns.model,
            stream_id=ns.stream_id,
            pipeline=ns.pipeline,
            max_fps=ns.max_fps,
            confidence=ns.confidence,
            classes=parse_classes(ns.classes),
            every_frame_delivery=ns.every_frame,
            timeout_s=ns.timeout,
            content="events" if ns.events else "frames",
        )
        with subscription:
            if ns.json:
                for message in subscription.messages():
                    write_json(message, indent=None)  # JSON Lines
                    sys.stdout.flush()
            else:
                for event in subscription:
                    _write_event(event)
                    sys.stdout.flush()
    return EXIT_OK


def _write_event(event: StreamFrame | StreamEvents | StreamStatus) -> None:
    if isinstance(event, StreamEvents):
        for e in event.events:
            how = f" {e.direction}" if e.direction else (f" after {e.dwell_ms:.0f} ms" if e.dwell_ms else "")
            sys.stdout.write(
                f"source {e.source_index} frame {e.sequence_number}: {e.class_name} #{e.track_id} "
                f"{e.kind} {e.name}{how}\n"
            )
        return
    if isinstance(event, StreamStatus):
        detail = ", ".join(f"#{s.source_index} {s.width}x{s.height} {s.fps:.1f} fps" for s in event.sources)
        extra = f" attempt {event.attempt}" if event.attempt else ""
        reason = f": {event.reason}" if event.reason else ""
        sys.stdout.write(
            f"[{event.stream_id}] source {event.source_index} {event.event.value}{extra}{reason}"
        )
        sys.stdout.write(f" ({detail})\n" if detail else "\n")
        return
    found = ", ".join(
        f"{d.class_name}{f' #{d.track_id}' if d.track_id else ''} {d.confidence:.2f}"
        for d in event.prediction.detections
    )
    if event.analytics is not None:
        counts = [f"{ln.name} {ln.left_to_right}/{ln.right_to_left}" for ln in event.analytics.lines]
        counts += [f"{z.name} {z.count} inside" for z in event.analytics.zones]
        found += f" [{', '.join(counts)}]" if counts else ""
    drops = (
        f" (skipped {event.frames_skipped}, dropped {event.results_dropped})"
        if (event.frames_skipped or event.results_dropped)
        else ""
    )
    sys.stdout.write(
        f"source {event.source_index} frame {event.sequence_number} @ {event.source_timestamp_ms:.0f} ms: "
        f"{found or 'nothing'}{drops}\n"
    )
