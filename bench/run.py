"""One benchmark run: the in-process sweep, then the same model behind a real server process, then the
targets' interleaved comparisons (paired.py), with the predictor and the server both loaded."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import visionrpc.server
from visionrpc.engines.onnxruntime_engine import available_cores
from visionrpc.v1 import inference_pb2

from . import assets, instructions, paired, previous, procstat
from .coldstart import measure_cold_start
from .compare import Side, compare_servers
from .floor import measure_floor
from .inprocess import Baseline, loaded_predictor
from .modes import Mode
from .report import NOISY_SHARE, Target, evaluate_targets
from .server_process import ServerProcess, accepted_flags, server_config, unaccepted_settings
from .shm import shared_memory_requests
from .stats import spread_summary
from .unary import LoadResult, encoded_requests, one_response, raw_requests, run_load

__all__ = ["run_benchmark"]


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextmanager
def _phase(meter: procstat.NoiseMeter, label: str) -> Iterator[None]:
    start = time.perf_counter()
    with meter.phase(label):
        yield
    noise = meter.phases.get(label, 0.0)
    warning = f" (other processes took {noise:.0%} of the CPU)" if noise > NOISY_SHARE else ""
    _say(f"{label}: {time.perf_counter() - start:.1f} s{warning}")


SHARED_MEMORY_FLAG = "--shared-memory"


def _server_source() -> Path:
    """The folder the measured server code is imported from (both processes import the same one)."""
    return Path(next(iter(visionrpc.server.__path__))).resolve()


def _commit() -> str:
    """The commit of the server code being measured, "-dirty" with uncommitted changes to tracked files."""
    root = _server_source()

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout

    try:
        head = git("rev-parse", "--short", "HEAD").strip()
        dirty = git("status", "--porcelain", "--untracked-files=no").strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def run_benchmark(
    mode: Mode, settings: dict[str, Any], baseline_ref: str | None = None
) -> tuple[dict[str, Any], list[Target]]:
    """Runs every measurement of `mode` once; `settings` are ServerConfig fields given to both sides. With
    `baseline_ref`, also the current server against that git ref's server (results["comparison"])."""
    started = time.perf_counter()
    meter = procstat.NoiseMeter()
    results: dict[str, Any] = {
        "mode": mode.name,
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": _commit(),
        "server_source": str(_server_source()),
        "machine": procstat.machine_info(),
    }
    images = [assets.load_image(name) for name in assets.IMAGES]
    raw = raw_requests(images)  # serialised once; every served phase (and the floor) sends these bytes
    video = assets.asset(assets.VIDEO)
    with tempfile.TemporaryDirectory(prefix="visionrpc-bench-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        tree = None
        if baseline_ref is not None:  # first, so that a bad ref fails before minutes of measuring
            repo = previous.repository_root(_server_source())
            tree = stack.enter_context(previous.checkout(baseline_ref, repo, root))
            _say(f"previous server: {baseline_ref} = {tree.commit[:12]} checked out in {tree.worktree}")
        media_root = root / "media"
        media_root.mkdir()
        shutil.copyfile(video, media_root / video.name)  # a copy: links out of the media root are refused
        settings = {
            "model_repository": root / "models",
            "cache_dir": assets.model_cache_dir(),
            "media_root": media_root,
            # A cancelled stream's pipeline lingers this long; the fan-out runs wait it out between runs.
            "pipeline_linger_s": 0.5,
            **settings,
        }
        config = server_config(settings)
        flags = accepted_flags()
        for name in unaccepted_settings(settings, flags):
            _say(f"warning: the server has no flag for {name}; left out")
        results["settings"] = {key: str(value) for key, value in settings.items()} | {
            "default_model": config.default_model,
            "intra_op_threads": config.intra_op_threads or available_cores(),
            "worker_threads": config.cpu_workers,  # 0 means one per core: the count it comes to
        }
        counter = instructions.probe()
        results["instructions"] = counter
        # Shared-memory inputs: only the measured server gets the flag (a --baseline-ref server may lack it).
        shm = SHARED_MEMORY_FLAG in flags
        with loaded_predictor(config) as predictor:
            info = predictor.engine_info
            results["engine"] = f"{info.engine} ({info.provider}, {info.device}, {info.precision})"
            baseline = Baseline(predictor, images)
            results["in_process"] = _sweep(mode, baseline, meter)
            if counter["available"]:
                counter["in_process_per_image"] = _instructions_in_process(baseline, mode.latency_images)
            extra = [SHARED_MEMORY_FLAG] if shm else []
            with ServerProcess(settings, root / "server.log", accepted=flags, extra=extra) as server:
                meter.server_pids.add(server.pid)
                results["server_argv"] = server.argv
                with _phase(meter, "server start-up"):
                    ready_s = server.wait_ready()
                results.update(_served(mode, server, raw, encoded_requests(images), meter))
                results["memory"]["server_ready_s"] = round(ready_s, 2)
                if counter["available"]:
                    counter["served_per_image"] = _instructions_served(server, raw, mode.latency_images)
                results["paired"] = _paired(
                    mode, baseline, server, raw, video, meter, config.pipeline_linger_s
                )
                results["shared_memory"] = _shared_memory(mode, baseline, server, images, meter, shm)
                if tree is not None:
                    results["comparison"] = _comparison(
                        mode, tree, settings, flags, server, raw, video.name, meter, root
                    )
                    results["comparison"]["current"] |= {
                        "commit": results["commit"],
                        "server_source": results["server_source"],
                    }
                response = one_response(server.address, raw[0])
                results["server_log_tail"] = server.log_tail(5).splitlines()
                status = server.stop()
                meter.server_pids.discard(server.pid)  # reaped: its CPU now counts among our children's
                if status != 0:
                    raise RuntimeError(f"the server exited with {status} after SIGTERM:\n{server.log_tail()}")
            with _phase(meter, "transport floor"):
                results["floor"] = measure_floor(settings, raw, response, mode.latency_pairs, root)
            with _phase(meter, "cold start"):
                results["cold_start"] = measure_cold_start(settings, raw, mode.cold_starts, root)
    results["duration_s"] = round(time.perf_counter() - started, 1)
    results["noise"] = meter.report()
    return results, evaluate_targets(results)


def _sweep(mode: Mode, baseline: Baseline, meter: procstat.NoiseMeter) -> dict[str, Any]:
    with _phase(meter, "in-process latency"):
        latency = baseline.latency(mode.latency_images)
    with _phase(meter, "in-process throughput sweep"):
        throughput = baseline.best_throughput(mode.batch_sizes, mode.thread_counts, mode.throughput_images)
    return {"latency": latency, "throughput": throughput}


def _served(
    mode: Mode,
    server: ServerProcess,
    raw: Sequence[bytes],
    png: Sequence[bytes],
    meter: procstat.NoiseMeter,
) -> dict[str, Any]:
    top = max(c for c, _ in mode.unary_requests)
    warm = run_load(server.address, raw, concurrency=top, count=mode.warmup_requests, warmup=0)
    memory: dict[str, Any] = {
        "concurrency": top,
        "warmup": {"requests": warm.requests + 1, "rss_mb": round(server.rss_mb(), 1)},
        "checkpoints": [],
    }
    done = 0
    for checkpoint in mode.memory_checkpoints:
        with _phase(meter, f"memory: {checkpoint} requests"):
            load = run_load(server.address, raw, concurrency=top, count=checkpoint - done, warmup=0)
        done = checkpoint
        rss, rate = round(server.rss_mb(), 1), round(load.requests_per_s, 2)
        memory["checkpoints"].append({"requests": checkpoint, "rss_mb": rss, "requests_per_s": rate})
    first, last = memory["checkpoints"]
    memory["growth_mb"] = round(last["rss_mb"] - first["rss_mb"], 1)

    unary: dict[str, LoadResult] = {}
    for concurrency, count in mode.unary_requests:
        with _phase(meter, f"unary c={concurrency}"):
            unary[f"c{concurrency}"] = run_load(server.address, raw, concurrency=concurrency, count=count)
    with _phase(meter, "unary c=1 PNG"):
        unary["c1_png"] = run_load(server.address, png, concurrency=1, count=mode.png_requests)
    return {"memory": memory, "unary": {key: load.summary() for key, load in unary.items()}}


def _paired(
    mode: Mode,
    baseline: Baseline,
    server: ServerProcess,
    raw: Sequence[bytes],
    video: Path,
    meter: procstat.NoiseMeter,
    linger_s: float,
) -> dict[str, Any]:
    """`raw[i]` must be `baseline.images[i]` as a serialised request (pairs compare the same image)."""
    top = max(c for c, _ in mode.unary_requests)
    out: dict[str, Any] = {}
    with _phase(meter, "paired latency"):
        out["latency"] = paired.paired_latency(baseline, server, raw, mode.latency_pairs)
    with _phase(meter, "paired throughput"):
        out["throughput"] = _paired_throughput(mode, baseline, server, raw, top)
    with _phase(meter, "paired stream"):
        out["stream"] = paired.paired_stream(
            baseline, server, video, mode.stream_frames, mode.stream_pairs, linger_s
        )
    with _phase(meter, "paired fan-out"):
        out["fanout"] = paired.paired_fanout(
            server, video.name, mode.fanout_frames, mode.fanout_pairs, linger_s
        )
    return out


def _paired_throughput(
    mode: Mode, baseline: Baseline, server: ServerProcess, requests: Sequence[bytes], concurrency: int
) -> dict[str, Any]:
    return paired.paired_throughput(
        baseline,
        server,
        requests,
        concurrency=concurrency,
        pairs=mode.throughput_pairs,
        seconds=mode.throughput_segment_s,
        warm_s=mode.throughput_warm_s,
    )


def _shared_memory(
    mode: Mode,
    baseline: Baseline,
    server: ServerProcess,
    images: Sequence[Any],
    meter: procstat.NoiseMeter,
    available: bool,
) -> dict[str, Any]:
    """c=1 and c=16 against the in-process side again, the pixels passed through shared memory."""
    if not available:
        return {"measured": False, "reason": f"the server has no {SHARED_MEMORY_FLAG} flag"}
    top = max(c for c, _ in mode.unary_requests)
    with shared_memory_requests(server.address, images) as requests:
        with _phase(meter, "paired latency, shared memory"):
            latency = paired.paired_latency(baseline, server, requests, mode.latency_pairs)
        with _phase(meter, "paired throughput, shared memory"):
            throughput = _paired_throughput(mode, baseline, server, requests, top)
    return {"measured": True, "latency": latency, "throughput": throughput}


def _postprocess_pairs(
    current: ServerProcess, previous: ServerProcess, requests: Sequence[bytes], pairs: int, block: int = 10
) -> dict[str, Any]:
    """The responses' `postprocess` timing per image, current vs previous server: `pairs` pairs of blocks of
    `block` c=1 calls, alternating; the median of the per-pair ratios of the blocks' medians, and the
    detections each server found in each request (post-processing must keep them)."""
    medians: dict[str, list[float]] = {"current": [], "previous": []}
    detections: dict[str, list[int]] = {}
    for i in range(pairs):
        order = [("current", current), ("previous", previous)]
        for label, server in order if i % 2 == 0 else order[::-1]:
            procstat.quiesce(current.pid, previous.pid)
            load = run_load(server.address, requests, concurrency=1, count=block, warmup=0)
            medians[label].append(float(np.median([t["postprocess_ms"] for t in load.server_timings])))
    for label, server in (("current", current), ("previous", previous)):
        detections[label] = [_detections(one_response(server.address, r)) for r in requests]
    return {
        "current_ms": round(float(np.median(medians["current"])), 3),
        "previous_ms": round(float(np.median(medians["previous"])), 3),
        "ratio": spread_summary(
            [c / p for c, p in zip(medians["current"], medians["previous"], strict=True)]
        ),
        "detections": detections,
        "same_detections": detections["current"] == detections["previous"],
    }


def _detections(response: bytes) -> int:
    return sum(len(p.detections) for p in inference_pb2.InferResponse.FromString(response).predictions)


def _instructions_in_process(baseline: Baseline, count: int) -> float | None:
    """User-space instructions per single-image infer in this process (all its threads)."""
    counted: dict[str, Any] = {}
    with instructions.count_instructions(os.getpid(), counted):
        for i in range(count):
            baseline.predict_one(i)
    return None if counted["instructions"] is None else round(counted["instructions"] / count)


def _instructions_served(server: ServerProcess, requests: Sequence[bytes], count: int) -> float | None:
    """The server's user-space instructions per Infer at c=1 (the load generator's are not counted)."""
    counted: dict[str, Any] = {}
    with instructions.count_instructions(server.pid, counted):
        run_load(server.address, requests, concurrency=1, count=count, warmup=0)
    return None if counted["instructions"] is None else round(counted["instructions"] / (count + 1))


def _comparison(
    mode: Mode,
    tree: previous.PreviousTree,
    settings: dict[str, Any],
    current_flags: frozenset[str],
    current: ServerProcess,
    raw: Sequence[bytes],
    video: str,
    meter: procstat.NoiseMeter,
    root: Path,
) -> dict[str, Any]:
    """The previous server (REF's code, the flags both servers accept, the same model repository, cache and
    media) started beside the running current one, then both measured in alternation (compare.py)."""
    both = current_flags & accepted_flags(tree.env(), tree.import_root)
    left_out = unaccepted_settings(settings, both)
    for name in left_out:
        _say(f"warning: {name} is not a flag of both servers; the previous server runs without it")
    info: dict[str, Any] = {
        "ref": tree.ref,
        "commit": tree.commit,
        "subject": tree.subject,
        "worktree": str(tree.worktree),
        "import_probe": tree.probe_imports(),
        "settings_left_out": left_out,
    }
    # Both sides' pipelines must be gone before an identical stream request (the default linger is 2 s).
    linger_s = float(settings["pipeline_linger_s"]) if not left_out else 5.0
    log = root / "previous-server.log"
    with ServerProcess(
        settings, log, accepted=both, env=tree.env(pycache=True), cwd=tree.import_root
    ) as server:
        meter.server_pids.add(server.pid)
        info["argv"] = server.argv
        with _phase(meter, "previous server start-up"):
            info["server_ready_s"] = round(server.wait_ready(), 2)
        info["imports"] = tree.verify_imports(previous.repository_root(_server_source()))
        _say(
            f"previous server imports {info['imports']['visionrpc_modules_from_worktree']} visionrpc modules "
            f"from {tree.worktree}"
        )
        with _phase(meter, "current vs previous server"):
            out = compare_servers(
                Side("current", current.address, current.pid),
                Side("previous", server.address, server.pid),
                raw,
                video,
                mode,
                linger_s,
            )
        rss = {"current": round(current.rss_mb(), 1), "previous": round(server.rss_mb(), 1)}
        with _phase(meter, "post-processing, current vs previous"):
            postprocess = _postprocess_pairs(current, server, raw, max(2, mode.png_requests // 10))
        info["log_tail"] = server.log_tail(5).splitlines()
        info["exit_status"] = server.stop()
        meter.server_pids.discard(server.pid)
    if info["exit_status"] != 0:
        _say(f"warning: the previous server exited with {info['exit_status']} after SIGTERM")
    return {
        "previous": info,
        "current": {"argv": current.argv},
        "rss_mb_after": rss,
        "postprocess": postprocess,
        **out,
    }
