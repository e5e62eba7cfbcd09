"""Instructions retired per image, where the machine exposes a hardware counter to `perf stat`.

Unlike wall or CPU time, an instruction count barely moves when the VM's clock or a neighbour does, so it
tells a code change from drift. Many VMs expose no performance counters to the guest (`perf stat` then says
`<not supported>`); `probe` says so and the report shows why nothing was counted. Callgrind would count
anywhere, but it runs ONNX Runtime ~50x slower: not for a 20-minute benchmark.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["count_instructions", "parse_perf_csv", "probe"]

_EVENT = "instructions:u"


def parse_perf_csv(text: str) -> int | None:
    """The instructions count from `perf stat -x,` output, None when perf says it is not counted."""
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[2] == _EVENT:
            return int(fields[0]) if fields[0].isdigit() else None
    return None


def probe() -> dict[str, Any]:
    """Whether `perf stat` can count user-space instructions here, and if not, why."""
    perf = shutil.which("perf")
    if perf is None:
        return {"available": False, "reason": "no perf binary on PATH (Debian: linux-perf)"}
    try:
        done = subprocess.run(
            [perf, "stat", "-e", _EVENT, "-x", ",", "--", "true"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"available": False, "reason": f"perf stat failed to run: {exc}"}
    if parse_perf_csv(done.stderr) is not None:
        return {"available": True, "reason": ""}
    detail = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
    return {
        "available": False,
        "reason": f"perf stat cannot count {_EVENT} on this machine ({detail}): the VM exposes no hardware "
        "performance counters to the guest",
    }


@contextmanager
def count_instructions(pid: int, into: dict[str, Any]) -> Iterator[None]:
    """Counts process `pid`'s user-space instructions (all its threads) while the block runs; sets
    `into["instructions"]` (None if perf counted nothing)."""
    perf = subprocess.Popen(
        ["perf", "stat", "-e", _EVENT, "-x", ",", "-p", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.3)  # perf attaches to the threads after it starts; the block must not begin before
    try:
        yield
    finally:
        perf.send_signal(signal.SIGINT)  # perf prints its counts when interrupted
        _, err = perf.communicate(timeout=30)
        into["instructions"] = parse_perf_csv(err)
