"""The JSON lines sink: appends the text sinks' JSON (encoding.py), one object per line, to a file.

Each line is flushed as it is written, so a reader tailing the file (or a crash) sees whole lines. With
`max_bytes` set, a line that would take the file past it first rotates the file the way logging's
RotatingFileHandler does: path -> path.1 -> path.2 ... up to `backups` (the oldest is deleted; with 0 backups
the file is truncated). A write that fails (disk full, permissions) drops that line and is counted; the file
is opened again for the next one.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..streams.types import StreamMessage
from .base import SinkStatus
from .config import JsonLinesSinkConfig
from .encoding import encode_message
from .worker import DeliveryError, SinkWorker

__all__ = ["JsonLinesSink"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Line:
    path: Path
    data: bytes  # ends with a newline


class JsonLinesSink:
    kind = "jsonl"
    needs_pixels = False

    def __init__(self, config: JsonLinesSinkConfig) -> None:
        self.name = config.name
        self._config = config
        # Worker thread only.
        self._file: BinaryIO | None = None
        self._file_path: Path | None = None
        self._worker: SinkWorker[_Line] = SinkWorker(
            self.name, self.kind, deliver=self._write, queue_size=config.queue_size, finish=self._close_file
        )

    def offer(self, pipeline: str, message: StreamMessage) -> None:
        try:
            data = encode_message(
                pipeline, message, content=self._config.content, include_status=self._config.include_status
            )
            path = self._config.path_for(pipeline)
        except Exception as exc:  # never raise into the pipeline
            logger.exception("JSON lines sink %s cannot encode a message", self.name)
            self._worker.drop(f"cannot encode: {exc!r}")
            return
        if data is not None:
            self._worker.put(_Line(path, data + b"\n"))

    def status(self) -> SinkStatus:
        return self._worker.status()

    def close(self, timeout_s: float = 5.0) -> None:
        self._worker.close(timeout_s)

    def _write(self, line: _Line) -> None:
        try:
            file = self._open(line.path)
            limit = self._config.max_bytes
            if limit and file.tell() > 0 and file.tell() + len(line.data) > limit:
                self._rotate(line.path)
                file = self._open(line.path)
            file.write(line.data)
            file.flush()
        except OSError as exc:
            self._close_file()  # opened again, perhaps elsewhere, for the next line
            raise DeliveryError(f"write {line.path}: {exc}", retryable=False) from None

    def _open(self, path: Path) -> BinaryIO:
        if self._file is None or self._file_path != path:
            self._close_file()
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("ab")
            self._file_path = path
        return self._file

    def _rotate(self, path: Path) -> None:
        self._close_file()
        backups = self._config.backups
        if backups == 0:
            path.unlink(missing_ok=True)
            return
        for index in range(backups - 1, 0, -1):
            older = Path(f"{path}.{index}")
            if older.exists():
                os.replace(older, f"{path}.{index + 1}")
        os.replace(path, f"{path}.1")

    def _close_file(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                logger.warning("JSON lines sink %s: closing %s failed: %s", self.name, self._file_path, exc)
            self._file = None
            self._file_path = None
