"""The whole local platform behind its HTTPS API, set up the way a user would: interfaces,
algorithms and their images are created through the API, and jobs run the real example
algorithms with the real runner.

Module scope, never session scope: the embedded endpoint shares moto's in-process state,
which other tests' ``mock_aws`` resets between modules.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import serve_local_stack
from tests.waits import WAIT_SECONDS

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "algorithms"
TERMINAL = ("Succeeded", "Failed", "Cancelled")
# A job's wait: the one budget of tests/waits.py (its modules import the name from here).
JOB_TIMEOUT = WAIT_SECONDS

SEGMENTS = [
    {"name": "background", "voxel_value": 0, "visible": False},
    {"name": "body", "voxel_value": 1, "visible": True},
]
SOCKETS: list[dict[str, Any]] = [
    {"title": "CT Image", "kind": "Image", "relative_path": "images/ct-image"},
    {
        "title": "Segmentation",
        "kind": "Segmentation",
        "relative_path": "images/segmentation",
        "overlay_segments": SEGMENTS,
    },
    {"title": "Results", "kind": "Anything", "relative_path": "results.json"},
    {"title": "Threshold", "kind": "Float", "relative_path": "threshold.json"},
    {"title": "Labels", "kind": "CSV file", "relative_path": "labels.csv"},
    {"title": "Summary", "kind": "Anything", "relative_path": "summary.json"},
    {"title": "Report", "kind": "CSV file", "relative_path": "report.csv"},
    {"title": "Seconds", "kind": "Float", "relative_path": "seconds.json"},
    {"title": "Slept", "kind": "Float", "relative_path": "slept.json"},
]
# example folder -> (inputs, outputs)
ALGORITHMS: dict[str, tuple[list[str], list[str]]] = {
    "threshold": (["ct-image"], ["segmentation", "results"]),
    "multi-input": (["ct-image", "threshold", "labels"], ["segmentation", "summary", "report"]),
    "crash": (["threshold"], ["results"]),
    "no-output": (["threshold"], ["results"]),
    "sleep": (["seconds"], ["slept"]),
}


def api_client(api_url: str, token: str, ca_file: str | Path) -> httpx.Client:
    """A keep-alive client for the HTTPS API, with the stack's CA."""
    return httpx.Client(
        base_url=api_url,
        verify=str(ca_file),
        headers={"Authorization": f"Bearer {token}"},
        timeout=WAIT_SECONDS,
    )


def checked(response: httpx.Response) -> Any:
    assert response.is_success, f"{response.request.method} {response.url}: {response.text}"
    return response.json()


def register_sockets(http: httpx.Client) -> None:
    listed = checked(http.get("components/interfaces/", params={"limit": 1000}))["results"]
    existing = {s["slug"] for s in listed}
    for socket in SOCKETS:
        if socket["title"].lower().replace(" ", "-") not in existing:
            checked(http.post("components/interfaces/", json=socket))


def register_algorithm(
    http: httpx.Client, example: str, *, title: str | None = None, users: list[str] | None = None
) -> dict[str, Any]:
    """Create an algorithm for an example folder, with a "local" image that runs its
    ``main.py`` with this Python, through the API."""
    inputs, outputs = ALGORITHMS[example]
    algorithm = checked(
        http.post(
            "algorithms/",
            json={
                "title": title or f"{example} example",
                "interfaces": [{"inputs": inputs, "outputs": outputs}],
                "time_limit": 300,
                "users": users or [],
            },
        )
    )
    checked(
        http.post(
            "algorithms/images/",
            json={
                "algorithm": algorithm["api_url"],
                "image": "local",
                "command": [sys.executable, "main.py"],
                "workdir": str(EXAMPLES / example),
            },
        )
    )
    return algorithm


def start_job(http: httpx.Client, algorithm: dict[str, Any], inputs: dict[str, Any]) -> str:
    """A job on JSON values only (no uploads), the way gcapi shapes the body."""
    empty = dict.fromkeys(
        ("file", "image", "upload_session", "user_upload", "user_uploads", "image_name")
    )
    body = {
        "algorithm": algorithm["api_url"],
        "inputs": [{"interface": k, "value": v, **empty} for k, v in inputs.items()],
    }
    return str(checked(http.post("algorithms/jobs/", json=body))["pk"])


def wait_for_job(http: httpx.Client, pk: str, timeout: float = JOB_TIMEOUT) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = checked(http.get(f"algorithms/jobs/{pk}/"))
        if job["status"] in TERMINAL:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {pk} still {job['status']!r} after {timeout} s")
        time.sleep(0.2)


def make_image(path: Path, *, size: int = 12, offset: float = 0.0) -> Path:
    """A small CT-like image: a bright ball (40 HU) in air (-1000 HU), with its own geometry."""
    import numpy
    import SimpleITK

    z, y, x = numpy.mgrid[:size, :size, :size]
    centre = (size - 1) / 2
    ball = (z - centre) ** 2 + (y - centre) ** 2 + (x - centre) ** 2 < (size / 3) ** 2
    voxels = numpy.where(ball, 40.0 + offset, -1000.0).astype(numpy.int16)
    image = SimpleITK.GetImageFromArray(voxels)
    image.SetSpacing((0.7, 0.8, 1.5))
    image.SetOrigin((-10.0, 5.0, 20.0 + offset))
    SimpleITK.WriteImage(image, str(path), True)
    return path


@dataclass
class Platform:
    stack: Any  # LocalStack
    token: str
    ca_file: str
    http: httpx.Client
    workdir: Path
    algorithms: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return str(self.stack.api_url)

    def gcapi(self, token: str | None = None) -> Any:
        import gcapi

        return gcapi.Client(
            base_url=self.api_url,
            token=token or self.token,
            verify=self.ca_file,
            timeout=WAIT_SECONDS,
        )


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    state_dir = tmp_path_factory.mktemp("state")
    stack = serve_local_stack("gantry-e2e", state_dir)
    try:
        token = stack.ctx.store.users.create_token("alice")
        ca_file = str(state_dir / "tls" / "ca.pem")
        with api_client(stack.api_url, token, ca_file) as http:
            register_sockets(http)
            platform = Platform(stack, token, ca_file, http, tmp_path_factory.mktemp("work"))
            for example in ALGORITHMS:
                platform.algorithms[example] = register_algorithm(http, example)
            yield platform
    finally:
        stack.stop()
