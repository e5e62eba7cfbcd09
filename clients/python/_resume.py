"""Resuming a broken stream subscription: what to remember, what to ask for, how long to wait.

A subscription breaks when its connection does (max connection age, a proxy restart, a server draining): the
call ends UNAVAILABLE. `ResumeState` remembers where the stream was, so the next call asks the server for what
followed (docs/stream-resume.md); `Backoff` spaces the attempts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from visionrpc.v1 import inference_pb2

__all__ = ["Backoff", "ResumePolicy", "ResumeState"]


@dataclass(frozen=True, slots=True)
class ResumePolicy:
    """How a stream resumes. `ResumePolicy(enabled=False)` ends the stream at the first break instead."""

    enabled: bool = True
    max_attempts: int = 8  # consecutive attempts without a message before giving up
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    jitter: float = 0.2  # +-20%

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"expected max_attempts >= 1, got {self.max_attempts}")
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise ValueError(
                f"expected 0 < initial_backoff_s <= max_backoff_s, got {self.initial_backoff_s}, "
                f"{self.max_backoff_s}"
            )


@dataclass(slots=True)
class Backoff:
    """Delays before consecutive attempts: initial, doubling, capped, jittered; `reset` after a success."""

    policy: ResumePolicy
    attempts: int = 0
    _random: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float | None:
        """The delay before the next attempt, or None when the attempts are used up."""
        if self.attempts >= self.policy.max_attempts:
            return None
        base = min(self.policy.max_backoff_s, self.policy.initial_backoff_s * 2**self.attempts)
        self.attempts += 1
        jitter = self.policy.jitter
        return float(base * self._random.uniform(1 - jitter, 1 + jitter))

    def reset(self) -> None:
        self.attempts = 0


@dataclass(slots=True)
class ResumeState:
    """Where a subscription is: its stream id, the last cursor received, each source's next frame."""

    stream_id: str = ""
    cursor: int = 0
    next_sequence_numbers: dict[int, int] = field(default_factory=dict)

    def record(self, message: inference_pb2.StreamPredictionsResponse) -> None:
        if message.stream_id != self.stream_id:  # a restarted stream numbers its cursors anew
            self.stream_id, self.cursor = message.stream_id, 0
        if message.cursor:
            self.cursor = max(self.cursor, message.cursor)
        if message.WhichOneof("payload") == "frame":
            frame = message.frame
            following = frame.sequence_number + 1
            if following > self.next_sequence_numbers.get(frame.source_index, 0):
                self.next_sequence_numbers[frame.source_index] = following

    def resume_request(
        self, original: inference_pb2.StreamPredictionsRequest
    ) -> inference_pb2.StreamPredictionsRequest:
        """The original request, asking to continue after what was received (unchanged before any message)."""
        request = inference_pb2.StreamPredictionsRequest()
        request.CopyFrom(original)
        if not self.stream_id:
            return request
        sources = max(len(original.sources), max(self.next_sequence_numbers, default=-1) + 1)
        request.resume.CopyFrom(
            inference_pb2.StreamResume(
                stream_id=self.stream_id,
                after_cursor=self.cursor,
                next_sequence_numbers=[self.next_sequence_numbers.get(i, 0) for i in range(sources)],
            )
        )
        return request
