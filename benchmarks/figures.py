"""What the benchmarks share: the percentile they print and the set-up of a local AWS."""

from __future__ import annotations

import os


def percentile(samples: list[float], q: float) -> float:
    """Nearest rank."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def local_credentials() -> None:
    """moto accepts any credentials; boto3 insists on having some (real ones are kept)."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(name, value)
