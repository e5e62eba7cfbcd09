"""Where a unary call's time goes inside the server: py-spy samples a real server process under load.

    pip install py-spy                          # or: pip install -e '.[profile]'
    python -m bench.profile                     # c=1, 20 s; writes bench/results/profile-c1.{txt,md}
    python -m bench.profile --concurrency 16 --seconds 20

py-spy samples every thread of the server (`--idle`, so waiting counts too) while our load generator sends
the benchmark's raw-pixel requests. Each request thread's samples are sorted into the steps of `Infer` (model
lookup, request to array, preprocess, engine, scheduler (queue, locks, waiting), postprocess,
response, grpcio around the handler); the rest of a request thread's time is spent idle, i.e. the call is in
transit (client, loopback, HTTP/2 framing, grpcio's poller). At concurrency 1 the table reads as milliseconds
per call.
The collapsed stacks (`.txt`) open in any flame graph viewer (speedscope, flamegraph.pl).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from . import assets
from .server_process import ServerProcess
from .unary import raw_requests, run_load

__all__ = ["classify", "main", "summarise"]

DEFAULT_OUT = Path(__file__).resolve().parent / "results"

# (step, substrings of which one must appear in the stack below the Infer frame), first match wins.
STEPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("engine (ONNX Runtime)", ("OnnxRuntimeEngine.infer",)),
    ("preprocess (letterbox, normalise)", ("preprocess (",)),
    ("postprocess (decode, NMS)", ("decode_batch (", "processing/decoders.py", "processing/nms.py")),
    ("model lookup (ModelManager.acquire)", ("ModelManager.acquire",)),
    ("request to array (decode_request_image)", ("decode_request_image",)),
    ("response message (infer_response)", ("infer_response",)),
    ("scheduler: queue, locks, waiting for a batch", ("BatchScheduler.submit (",)),
)
_IN_INFER = "InferenceServicer.Infer ("
_AROUND = "grpcio around the handler (deserialise, send, status)"
_TRANSIT = "in transit: client, loopback, HTTP/2, grpcio's poller (wall time - the above)"
_MAIN_THREAD = "_run_module_as_main"  # sampled at every tick (--idle): the tick count


def classify(stack: str) -> str | None:
    """The step of one sampled stack of a request thread; None for other threads and idle ones."""
    if _IN_INFER in stack:
        below = stack.split(_IN_INFER, 1)[1]
        for step, markers in STEPS:
            if any(marker in below for marker in markers):
                return step
        return "the rest of Infer (ids, options, scheduler bookkeeping)"
    if "_unary_response_in_pool" in stack:
        return _AROUND
    return None


def summarise(raw: Path, seconds: float, calls: int, concurrency: int) -> str:
    """A Markdown table: each step's milliseconds per call (at c=1 they add up to the client's latency)."""
    counts: Counter[str] = Counter()
    ticks = 0
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if _MAIN_THREAD in stack:
            ticks += int(samples)
        step = classify(stack)
        if step is not None:
            counts[step] += int(samples)
    if ticks == 0:
        raise SystemExit(f"no sample of the server's main thread in {raw}: did py-spy sample it?")
    ms_per_tick = seconds * 1000.0 / ticks  # py-spy may fall behind its nominal rate: use the real one
    if (
        concurrency == 1
    ):  # one call at a time: whatever the request threads were not doing, the call was in transit
        counts[_TRANSIT] = max(0, ticks - sum(counts.values()))
    rows = ["| step | ms per call |", "|---|---:|"]
    for name, count in counts.most_common():
        rows.append(f"| {name} | {count * ms_per_tick / calls:.3f} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    about = (__doc__ or "").splitlines()[0]
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=about)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=int, default=20, help="how long py-spy samples")
    parser.add_argument("--rate", type=int, default=250, help="samples per second per thread")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ns = parser.parse_args(argv)
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        parser.error("py-spy is not installed: pip install py-spy")
    requests = raw_requests([assets.load_image(name) for name in assets.IMAGES])
    ns.out.mkdir(parents=True, exist_ok=True)
    raw = ns.out / f"profile-c{ns.concurrency}.txt"
    with tempfile.TemporaryDirectory(prefix="visionrpc-profile-") as tmp:
        settings = {"model_repository": Path(tmp) / "models", "cache_dir": assets.model_cache_dir()}
        with ServerProcess(settings, Path(tmp) / "server.log") as server:
            server.wait_ready()
            run_load(server.address, requests, concurrency=ns.concurrency, count=8 * ns.concurrency)
            # --threads keeps each thread's samples apart, --idle counts waiting too, --nonblocking reads the
            # stacks without pausing the server (pausing it at every sample slowed calls by a third).
            argv_spy = [py_spy, "record", "--pid", str(server.pid), "--rate", str(ns.rate), "--idle"]
            argv_spy += [
                "--nonblocking",
                "--threads",
                "--format",
                "raw",
                "--duration",
                str(round(ns.seconds)),
                "--output",
                str(raw),
            ]
            spy = subprocess.Popen(argv_spy, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            time.sleep(1.0)  # py-spy attaches
            load = run_load(
                server.address, requests, concurrency=ns.concurrency, count=10_000, stop_after_s=ns.seconds
            )
            _, errors = spy.communicate(timeout=ns.seconds + 60)
            if spy.returncode != 0:
                raise SystemExit(f"py-spy failed ({spy.returncode}): {errors.strip()}")
    calls = round(load.requests_per_s * ns.seconds)  # the calls inside py-spy's window
    table = summarise(raw, ns.seconds, calls, ns.concurrency)
    summary = load.summary()
    text = (
        f"# Where `Infer` spends its time, c={ns.concurrency}\n\n"
        f"py-spy at {ns.rate} Hz for {ns.seconds:.0f} s (~{calls} calls); client p50 "
        f"{summary['latency']['p50_ms']:.2f} ms, {summary['requests_per_s']:.1f} req/s; server pipeline p50 "
        f"{summary['server_pipeline_p50_ms']['total_ms']:.2f} ms; outside the pipeline "
        f"{summary['outside_pipeline_p50_ms']:.2f} ms. Sampling slows the server a little.\n\n{table}\n"
    )
    (raw.with_suffix(".md")).write_text(text)
    print(text)
    print(f"wrote {raw} and {raw.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
