"""JSON-line logging of the runner and of the algorithm's output.

Every line the runner writes is one JSON object, the shape grand-challenge shows in a job's
logs: ``{"log", "level", "source", "internal", "task"}``. ``internal`` separates the runner's
own messages from the algorithm's, so the platform can show users only theirs.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Literal, TextIO

Level = Literal["INFO", "WARNING", "ERROR"]
Source = Literal["stdout", "stderr", "runner"]


class JsonLog:
    """Thread-safe writer of JSON log lines to a text stream (the runner's stdout)."""

    def __init__(self, task: str | None = None, stream: TextIO | None = None) -> None:
        self.task = task
        self._stream = stream
        self._lock = threading.Lock()

    def _write(self, log: str, level: Level, source: Source, internal: bool) -> None:
        line = json.dumps(
            {"log": log, "level": level, "source": source, "internal": internal, "task": self.task}
        )
        stream = self._stream if self._stream is not None else sys.stdout
        with self._lock:
            stream.write(line + "\n")
            stream.flush()

    def raw(self, document: dict) -> None:
        """One JSON object of another shape on the same stream (serve mode's replies)."""
        stream = self._stream if self._stream is not None else sys.stdout
        with self._lock:
            stream.write(json.dumps(document) + "\n")
            stream.flush()

    def user(self, log: str, source: Literal["stdout", "stderr"], warning: bool = False) -> None:
        # grand-challenge marks the algorithm's stderr as warnings.
        level: Level = "WARNING" if warning or source == "stderr" else "INFO"
        self._write(log, level, source, internal=False)

    def info(self, log: str) -> None:
        self._write(log, "INFO", "runner", internal=True)

    def warning(self, log: str) -> None:
        self._write(log, "WARNING", "runner", internal=True)

    def error(self, log: str) -> None:
        self._write(log, "ERROR", "runner", internal=True)
