"""Jobs of a no-op algorithm, as the AWS-request test and the benchmarks make and wait for them.

The algorithm takes one Integer input (``number``) and must write one Integer output
(``result``): a socket set needs an output, so a job of an algorithm that writes nothing ends
Failed. ``NOOP_COMMAND`` is the noop example plus that output, run from the example's folder
with this interpreter (``NOOP_IMAGE``, image ``local``). Jobs are waited for through the
compute backend's event sink (``Finished``), not by reading them, so the wait adds no AWS
requests of its own.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

NOOP = Path(__file__).resolve().parents[1] / "examples" / "algorithms" / "noop"
NOOP_SCRIPT = (
    "import os, runpy; runpy.run_path('main.py'); "
    "open(os.path.join(os.environ['OUTPUT_DIR'], 'result.json'), 'w').write('0')"
)
NOOP_COMMAND = [sys.executable, "-c", NOOP_SCRIPT]
# Its image as ``POST algorithms/images/`` takes it (but the algorithm).
NOOP_IMAGE: dict[str, Any] = {"image": "local", "command": NOOP_COMMAND, "workdir": str(NOOP)}
# The runner's requests carry this in their User-Agent (botocore's app id, set through the
# stack's extra environment), so the endpoint counts them apart from the platform's.
RUNNER_APP_ID = "gantry-runner"
# An API call: (method, path, JSON body) -> the answer's JSON (``InProcessApi.request``).
Request = Callable[[str, str, Any], Any]


def register_sockets(request: Request) -> None:
    """The ``number`` input and the ``result`` output."""
    for title, path in (("Number", "number.json"), ("Result", "result.json")):
        request(
            "POST",
            "components/interfaces/",
            {"title": title, "kind": "Integer", "relative_path": path},
        )


def register_algorithm(request: Request, title: str, image: dict[str, Any]) -> dict[str, Any]:
    """An algorithm from ``number`` to ``result`` with ``image`` (the body of
    ``POST algorithms/images/`` but its algorithm) as its desired image."""
    algorithm = request(
        "POST",
        "algorithms/",
        {"title": title, "interfaces": [{"inputs": ["number"], "outputs": ["result"]}]},
    )
    request("POST", "algorithms/images/", {"algorithm": algorithm["api_url"], **image})
    return dict(algorithm)


def job_body(algorithm_url: str, value: int) -> dict[str, Any]:
    """The body of ``POST algorithms/jobs/`` as gcapi sends it: each input with all eight
    keys."""
    empty = ("file", "image", "upload_session", "user_upload", "user_uploads", "image_name")
    number = {"interface": "number", "value": value, **dict.fromkeys(empty)}
    return {"algorithm": algorithm_url, "inputs": [number]}


class Finished:
    """Wraps the backend's event sink: when the callback has handled a compute job's final
    event, the moment (``time.perf_counter``) is noted for its name."""

    def __init__(self, backend: Any) -> None:
        self._sink = backend.on_event
        self._seen: dict[str, float] = {}
        self._changed = threading.Condition()
        backend.on_event = self

    def __call__(self, event: dict[str, Any]) -> None:
        self._sink(event)
        detail = event.get("detail", {})
        if detail.get("status") in ("SUCCEEDED", "FAILED"):
            with self._changed:
                self._seen[str(detail.get("jobName"))] = time.perf_counter()
                self._changed.notify_all()

    def wait(self, name: str, deadline: float) -> float:
        """The moment compute job ``name`` was finished; TimeoutError past ``deadline`` (a
        ``time.perf_counter`` value)."""
        with self._changed:
            while name not in self._seen:
                if not self._changed.wait(max(0.0, deadline - time.perf_counter())):
                    raise TimeoutError(f"{name} did not finish")
            return self._seen[name]
