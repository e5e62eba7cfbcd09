"""The supervisor of declared pipelines: runs each through the stream manager, feeds its sinks, restarts it
after failures with exponential backoff, and answers the PipelineService.

One thread per declared pipeline while it runs ("visionrpc-pipeline-<name>"). It starts the pipeline as a
private stream (`StreamManager.start_private`: never shared with identical StreamPredictions requests, yet
joinable by its stream id, which is how `StreamPredictions(pipeline=NAME)` subscribers join it) and holds its
first subscription, a lossy one, from which it hands every message to each sink. Sinks never block
(`Sink.offer` queues or drops), so a slow, failing or hanging sink costs the pipeline nothing; the thread's
own queue is lossy too, so not even a stalled supervisor could hold the pipeline up.

States (pipelines.proto): STOPPED -> STARTING -> RUNNING -> (ENDED | BACKOFF -> STARTING ...). A pipeline that
fails (its model does not load, a source fails) waits restart.delay(n) and starts again; `restarts` counts
those restarts. Its files ending is ENDED, or a new run when it loops. Sinks stay open across restarts and
loops, and close when the pipeline stops, ends or the server shuts down (so a recorded video is complete).

Locking: each runner's condition guards its fields only; the stream manager and sinks are called outside it.
Every public call may block briefly (Stop waits for the pipeline to wind down): call it from a worker thread,
never from the event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from ..analytics.types import LineState, StreamAnalytics, ZoneState
from ..errors import FailedPreconditionError, NotFoundError, UnavailableError, VisionRpcError
from ..sinks import open_sink
from ..sinks.base import Sink, SinkStatus
from ..sinks.config import SinkConfig
from ..streams.manager import STOPPED_REASON, StreamManager, StreamRequest
from ..streams.pipeline import SHUTDOWN_REASON
from ..streams.subscription import Subscription
from ..streams.types import Delivery, FrameResult, StreamEnd
from .config import DeclaredPipeline
from .types import PipelineState, PipelineStatus

__all__ = ["SinkOpener", "Supervisor"]

logger = logging.getLogger(__name__)

SinkOpener = Callable[[SinkConfig, StreamAnalytics], Sink]
# How often a pipeline's thread looks up from its subscription to see whether it was told to stop; Stop and
# shutdown also end the stream, which wakes it at once, so this is only a safety net.
_POLL_S = 1.0
_STOP_TIMEOUT_S = 15.0
_SINK_CLOSE_TIMEOUT_S = 5.0


def _open_sink(config: SinkConfig, analytics: StreamAnalytics) -> Sink:
    return open_sink(config, analytics=analytics)


class Supervisor:
    """Runs the declared pipelines. Thread-safe.

    Example:
        supervisor = Supervisor(load_pipelines_file(path, policy, "yolov3-tiny-coco"), streams)
        supervisor.start_all()          # those declared with autostart (the server does this once listening)
        supervisor.status("bikes-gate").state
        supervisor.close()              # at shutdown, after the stream manager closed
    """

    def __init__(
        self,
        pipelines: Sequence[DeclaredPipeline],
        streams: StreamManager,
        *,
        sink_opener: SinkOpener = _open_sink,
    ) -> None:
        self._streams = streams
        self._runners = {p.name: _Runner(p, streams, sink_opener) for p in pipelines}

    def start_all(self) -> None:
        """Starts every pipeline declared with autostart (in its own thread; returns at once)."""
        for runner in self._runners.values():
            if runner.declared.autostart:
                runner.start()

    def list(self) -> list[PipelineStatus]:
        return [runner.status() for runner in self._runners.values()]

    def status(self, name: str) -> PipelineStatus:
        """Raises NotFoundError (PIPELINE_NOT_FOUND)."""
        return self._runner(name).status()

    def start(self, name: str) -> PipelineStatus:
        """Starts a stopped, ended or backing-off pipeline now; idempotent. Raises NotFoundError."""
        runner = self._runner(name)
        runner.start()
        return runner.status()

    def stop(self, name: str) -> PipelineStatus:
        """Stops a pipeline until started again, waiting until it stopped; its subscribers' streams end.
        Idempotent. Raises NotFoundError."""
        runner = self._runner(name)
        runner.stop()
        return runner.status()

    def subscribe(self, name: str, delivery: Delivery = Delivery.LOSSY) -> Subscription:
        """Joins the running stream of a declared pipeline.

        Raises:
            NotFoundError: PIPELINE_NOT_FOUND, no pipeline of that name is declared.
            FailedPreconditionError: PIPELINE_NOT_RUNNING, it is declared but not running now (stopped,
                ended, starting or backing off); GetPipeline says why.
            as StreamManager.join otherwise.
        """
        runner = self._runner(name)
        stream_id, state = runner.running_stream()
        if stream_id:
            try:
                return self._streams.join(stream_id, delivery)
            except NotFoundError:  # it ended between our look and the join
                state = runner.status().state
        raise FailedPreconditionError(
            f"pipeline {name!r} is not running (it is {state.value}); start it with StartPipeline",
            reason="PIPELINE_NOT_RUNNING",
            metadata={"pipeline": name, "state": state.name},
        )

    def close(self, timeout_s: float = _STOP_TIMEOUT_S) -> None:
        """Stops every pipeline and closes the sinks (server shutdown). Idempotent."""
        runners = list(self._runners.values())
        for runner in runners:
            runner.shut_down()
        deadline = time.monotonic() + timeout_s
        for runner in runners:
            if not runner.join(max(0.0, deadline - time.monotonic())):
                logger.warning(
                    "declared pipeline %s did not stop within %.0f s", runner.declared.name, timeout_s
                )

    def _runner(self, name: str) -> _Runner:
        runner = self._runners.get(name)
        if runner is None:
            raise NotFoundError(
                f"no pipeline named {name!r} is declared on this server",
                reason="PIPELINE_NOT_FOUND",
                metadata={"pipeline": name},
            )
        return runner


class _Runner:
    """One declared pipeline: its state, and the thread that runs it while it is wanted."""

    def __init__(self, declared: DeclaredPipeline, streams: StreamManager, sink_opener: SinkOpener) -> None:
        self.declared = declared
        self._streams = streams
        self._sink_opener = sink_opener
        self._request = StreamRequest(
            declared.sources, declared.model_id, declared.options, declared.stream_options
        )
        self._cond = threading.Condition()
        # Guarded by the condition.
        self._state = PipelineState.STOPPED
        self._since = time.time()
        self._stream_id = ""
        self._restarts = 0
        self._last_error = ""
        self._frames = 0  # frames the current (or last) run inferred, as its results arrive here
        self._wanted = False
        self._closed = False
        self._kick = False  # Start during a backoff: try again now
        self._thread: threading.Thread | None = None
        self._sinks: tuple[Sink, ...] = ()
        self._closed_sinks: tuple[SinkStatus, ...] = ()  # the last status of sinks closed since
        self._zones: dict[tuple[str, int], ZoneState] = {}
        self._lines: dict[tuple[str, int], LineState] = {}

    # -- control -----------------------------------------------------------------------------------------

    def start(self) -> None:
        with self._cond:
            if self._closed:
                raise UnavailableError("the server is shutting down", reason="SHUTTING_DOWN")
            self._wanted = True
            self._kick = True
            if self._state in (PipelineState.STOPPED, PipelineState.ENDED):
                self._set_state(PipelineState.STARTING)  # what StartPipeline answers, not STOPPED
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"visionrpc-pipeline-{self.declared.name}", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._wanted = False
            stream_id = self._stream_id
            self._cond.notify_all()
        if stream_id:
            self._streams.stop(stream_id, STOPPED_REASON)
        self.join(_STOP_TIMEOUT_S)

    def shut_down(self) -> None:
        with self._cond:
            self._closed = True
            stream_id = self._stream_id
            self._cond.notify_all()
        if stream_id:  # subscribers by name are told to resume elsewhere, as for any stream at shutdown
            self._streams.stop(stream_id, SHUTDOWN_REASON)

    def join(self, timeout_s: float) -> bool:
        with self._cond:
            thread = self._thread
        if thread is None:
            return True
        thread.join(timeout_s)
        return not thread.is_alive()

    def running_stream(self) -> tuple[str, PipelineState]:
        with self._cond:
            return (self._stream_id if self._state is PipelineState.RUNNING else ""), self._state

    def status(self) -> PipelineStatus:
        with self._cond:
            state, since, stream_id = self._state, self._since, self._stream_id
            restarts, last_error, frames = self._restarts, self._last_error, self._frames
            sinks, closed_sinks = self._sinks, self._closed_sinks
            zones = tuple(self._zones.values())
            lines = tuple(self._lines.values())
        stats = self._streams.pipeline_stats(stream_id) if stream_id else None
        if stats is not None:
            frames = max(frames, stats[0])
        return PipelineStatus(
            name=self.declared.name,
            state=state,
            state_since=since,
            stream_id=stream_id if state is PipelineState.RUNNING else "",
            model_id=str(self.declared.model_id),
            sources=self.declared.declared_sources,
            frames_processed=frames,
            restarts=restarts,
            last_error=last_error,
            subscribers=max(0, stats[1] - 1) if stats is not None else 0,  # less our own
            sinks=tuple(sink.status() for sink in sinks) if sinks else closed_sinks,
            zones=zones,
            lines=lines,
        )

    # -- the pipeline's thread ---------------------------------------------------------------------------

    def _set_state(self, state: PipelineState) -> None:
        """Caller holds the condition."""
        if state is not self._state:
            self._state, self._since = state, time.time()
            logger.info("declared pipeline %s: %s", self.declared.name, state.value)

    def _run(self) -> None:
        while True:
            final = PipelineState.STOPPED
            try:
                final = self._serve()
            except Exception as exc:  # a bug must leave the pipeline visibly stopped, not silently dead
                logger.exception("declared pipeline %s failed", self.declared.name)
                with self._cond:
                    self._last_error = f"internal error: {exc}"
                    self._wanted = False
            # Sinks deliver what they hold first: once ENDED or STOPPED shows, the receivers have it all.
            self._close_sinks()
            with self._cond:
                if self._wanted and not self._closed:  # started again while it was winding down
                    continue
                self._set_state(final)
                self._thread = None
                return

    def _serve(self) -> PipelineState:
        """Runs, restarts and loops the pipeline until it is stopped, ends, gives up, or the server stops;
        returns how it finished (STOPPED or ENDED)."""
        failures = 0
        while True:
            with self._cond:
                if not self._wanted or self._closed:
                    return PipelineState.STOPPED
                self._kick = False
                self._set_state(PipelineState.STARTING)
            try:
                self._open_sinks()
            except (OSError, ValueError) as exc:  # a sink that cannot open (a directory it may not create)
                failures += 1
                if not self._back_off(failures, f"a sink failed to open: {exc}"):
                    return PipelineState.STOPPED
                continue
            try:
                subscription = self._streams.start_private(
                    self._request, keep_pixels=any(sink.needs_pixels for sink in self._sinks)
                )
            except VisionRpcError as exc:
                if isinstance(exc, UnavailableError) and exc.reason == "SHUTTING_DOWN":
                    return PipelineState.STOPPED
                failures += 1
                if not self._back_off(failures, exc.message):
                    return PipelineState.STOPPED
                continue
            end, produced = self._watch(subscription)
            if produced:
                failures = 0
            if end is None or end.error == STOPPED_REASON:
                continue  # stopped: the top of the loop sees it
            if end.error == SHUTDOWN_REASON:
                return PipelineState.STOPPED
            if end.error:
                failures += 1
                if not self._back_off(failures, end.error):
                    return PipelineState.STOPPED
                continue
            if not self.declared.loop:
                with self._cond:
                    self._wanted = False
                return PipelineState.ENDED

    def _watch(self, subscription: Subscription) -> tuple[StreamEnd | None, bool]:
        """Feeds the sinks from a started stream until it ends (or we are told to stop): its end, and
        whether it produced any frame (a run that did resets the restart backoff)."""
        name = self.declared.name
        with self._cond:
            self._stream_id = subscription.stream_id
            self._zones.clear()
            self._lines.clear()
            self._frames = 0
            self._set_state(PipelineState.RUNNING)
            wanted = self._wanted and not self._closed
        if not wanted:  # stopped while starting: Stop saw no stream id to stop
            self._streams.stop(subscription.stream_id, STOPPED_REASON)
        produced = False
        received = 0
        end: StreamEnd | None = None
        try:
            while end is None:
                message = subscription.get(timeout_s=_POLL_S)
                if message is None:
                    with self._cond:
                        wanted, closed = self._wanted, self._closed
                    if closed or not wanted:  # told to stop before the stream was known: end it now
                        reason = SHUTDOWN_REASON if closed else STOPPED_REASON
                        self._streams.stop(subscription.stream_id, reason)
                    continue
                for sink in self._sinks:
                    try:
                        sink.offer(name, message)
                    except Exception:  # one sink's bug must not cost the others their messages
                        logger.exception("declared pipeline %s: sink %s failed", name, sink.name)
                if isinstance(message, FrameResult):
                    produced = True
                    received += 1
                    self._record(message, received + message.results_dropped)
                elif isinstance(message, StreamEnd):
                    end = message
        finally:
            subscription.close()
            with self._cond:
                self._stream_id = ""
        if end is not None and end.error and end.error not in (STOPPED_REASON, SHUTDOWN_REASON):
            logger.warning("declared pipeline %s failed: %s", name, end.error)
        return end, produced

    def _record(self, result: FrameResult, frames: int) -> None:
        """A result's zone and line states become the latest; `frames`: inferred so far (received, and
        dropped by our own queue)."""
        with self._cond:
            self._frames = frames
            if result.analytics is None:
                return
            for zone in result.analytics.zones:
                self._zones[(zone.name, zone.source_index)] = zone
            for line in result.analytics.lines:
                self._lines[(line.name, line.source_index)] = line

    def _back_off(self, failures: int, error: str) -> bool:
        """After a failure: waits out the backoff (True: start again), or gives up (False)."""
        policy = self.declared.restart
        with self._cond:
            self._last_error = error
            if not self._wanted or self._closed:
                return False
            if policy.max_attempts and failures > policy.max_attempts:
                logger.error(
                    "declared pipeline %s gave up after %d failures in a row: %s",
                    self.declared.name, failures, error,
                )  # fmt: skip
                self._last_error = f"gave up after {failures} failures in a row: {error}"
                self._wanted = False
                return False
            delay = policy.delay(failures)
            logger.warning(
                "declared pipeline %s failed (%s); restarting in %.1f s", self.declared.name, error, delay
            )
            self._set_state(PipelineState.BACKOFF)
            self._cond.wait_for(lambda: not self._wanted or self._closed or self._kick, delay)
            if not self._wanted or self._closed:
                return False
            self._restarts += 1
            return True

    def _open_sinks(self) -> None:
        """Opens the sinks once per run of the thread (they outlive restarts and loops)."""
        if self._sinks or not self.declared.sinks:
            return
        analytics = self.declared.stream_options.analytics
        opened: list[Sink] = []
        try:
            for config in self.declared.sinks:
                opened.append(self._sink_opener(config, analytics))
        except BaseException:
            for sink in opened:
                sink.close(timeout_s=0)
            raise
        with self._cond:
            self._sinks = tuple(opened)

    def _close_sinks(self) -> None:
        """Closes the sinks (each delivers what it holds, within its timeout); status keeps their last."""
        sinks = self._sinks  # only this thread changes it
        for sink in sinks:
            try:
                sink.close(timeout_s=_SINK_CLOSE_TIMEOUT_S)
            except Exception:
                logger.exception(
                    "declared pipeline %s: sink %s failed to close", self.declared.name, sink.name
                )
        statuses = tuple(sink.status() for sink in sinks)
        with self._cond:
            self._sinks = ()
            if sinks:
                self._closed_sinks = statuses
