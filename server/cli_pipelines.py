"""`visionrpc pipelines list | status NAME | start NAME | stop NAME`: the server's declared pipelines.

    visionrpc pipelines list                 one line per pipeline: state, frames, restarts, line counts
    visionrpc pipelines status bikes-gate    everything GetPipeline says: sinks, zones, lines, last error
    visionrpc pipelines stop bikes-gate      (an admin key when the server checks keys)
    visionrpc stream --pipeline bikes-gate   watch one live (cli_stream)

`--json` prints the protobuf response (ListPipelinesResponse, or the one PipelineStatus) instead.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Sequence

from visionrpc.client import PipelineInfo
from visionrpc.v1 import pipelines_pb2

from .cli_common import EXIT_OK, CommandAdder, client_for, write_json

__all__ = ["add_pipelines_command"]


def add_pipelines_command(commands: CommandAdder, parents: list[argparse.ArgumentParser]) -> None:
    """Adds `pipelines` to the `visionrpc` commands; `parents` carry the client flags (--address, --json)."""
    pipelines = commands.add_parser(
        "pipelines",
        help="list, inspect, start or stop the server's declared pipelines",
        description="The pipelines of the server's pipelines file (visionrpc serve --pipelines FILE).",
    )
    actions = pipelines.add_subparsers(dest="pipelines_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=parents, help="list the declared pipelines")
    listing.set_defaults(handler=_cmd_list)
    for action, help_text in (
        ("status", "show one pipeline: state, frames, sinks, zones and lines"),
        ("start", "start a stopped or ended pipeline"),
        ("stop", "stop a pipeline until started again"),
    ):
        sub = actions.add_parser(action, parents=parents, help=help_text)
        sub.add_argument("name", metavar="NAME")
        sub.set_defaults(handler=_cmd_action, action=action)


def _cmd_list(ns: argparse.Namespace) -> int:
    with client_for(ns) as client:
        pipelines = client.pipelines.list()
    if ns.json:
        write_json(pipelines_pb2.ListPipelinesResponse(pipelines=[p.proto for p in pipelines]))
        return EXIT_OK
    rows = [["NAME", "STATE", "MODEL", "FRAMES", "RESTARTS", "SUBSCRIBERS", "LINES", "ERROR"]]
    for p in pipelines:
        rows.append(
            [
                p.name,
                p.state.value,
                p.model_id,
                str(p.frames_processed),
                str(p.restarts),
                str(p.subscribers),
                _lines_text(p) or "-",
                p.last_error or "",
            ]
        )
    _write_table(rows)
    return EXIT_OK


def _cmd_action(ns: argparse.Namespace) -> int:
    with client_for(ns) as client:
        pipelines = client.pipelines
        actions = {"status": pipelines.get, "start": pipelines.start, "stop": pipelines.stop}
        pipeline = actions[ns.action](ns.name)
    if ns.json:
        write_json(pipeline.proto)
    else:
        _write_pipeline(pipeline)
    return EXIT_OK


def _lines_text(p: PipelineInfo) -> str:
    return ", ".join(
        f"{line.name}" + (f"#{line.source_index}" if line.source_index else "")
        + f" {line.left_to_right}/{line.right_to_left}"
        for line in p.lines
    )  # fmt: skip


def _when(seconds: float) -> str:
    if not seconds:
        return "-"
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _write_pipeline(p: PipelineInfo) -> None:
    rows = [
        ("name", p.name),
        ("state", f"{p.state.value} since {_when(p.state_since)}"),
        ("stream", p.stream_id or "-"),
        ("model", p.model_id),
        ("sources", ", ".join(str(s) for s in p.sources)),
        ("frames", str(p.frames_processed)),
        ("restarts", str(p.restarts)),
        ("subscribers", str(p.subscribers)),
        ("last error", p.last_error or "-"),
    ]
    for key, value in rows:
        sys.stdout.write(f"{key + ':':<13}{value}".rstrip() + "\n")
    if p.sinks:
        sys.stdout.write("sinks:\n")
        table = [["  NAME", "KIND", "DELIVERED", "FAILED", "DROPPED", "QUEUED", "LAST ERROR"]]
        for s in p.sinks:
            error = s.last_error
            if error and s.last_error_time:
                error += f" ({_when(s.last_error_time)})"
            table.append(
                [f"  {s.name}", s.kind, str(s.delivered), str(s.failed), str(s.dropped), str(s.queued), error]
            )
        _write_table(table)
    for z in p.zones:
        sys.stdout.write(
            f"zone {z.name} (source {z.source_index}): {z.count} inside, {z.entered_total} entered, "
            f"{z.exited_total} exited\n"
        )
    for line in p.lines:
        sys.stdout.write(
            f"line {line.name} (source {line.source_index}): {line.left_to_right} left to right, "
            f"{line.right_to_left} right to left\n"
        )


def _write_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        line = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        sys.stdout.write(line.rstrip() + "\n")
