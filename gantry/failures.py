"""The failure messages a user reads on a job, written by both the runner and the platform.

The runner says why the algorithm failed when it can see it (exec and invoke mode); the
platform says the same when the runner could not (the compute service killed the container
for memory or time before a result was written). One text for one cause, wherever it is
found; the texts are grand-challenge's. Pure data: the runner imports this module.
"""

from __future__ import annotations

TIME_LIMIT = "Time limit exceeded"
OUT_OF_MEMORY = "The container was killed as it exceeded its memory limit"


def exited_with(return_code: int) -> str:
    """The message for an algorithm that failed and said nothing on its standard error."""
    return f"The algorithm exited with code {return_code}"
