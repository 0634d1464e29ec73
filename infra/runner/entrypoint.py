"""Entry point of a runner image: run the job's command with the runner's own Python.

The job definition's command is ``python -m batch_runner invoke --file Ref::invocation``. In
a runner image ``python`` would be whatever the algorithm's image put on PATH (or nothing), so
the image's ENTRYPOINT is this file, run by the runner's Python under /opt/gantry: it drops a
leading ``python``/``python3`` and execs the rest with its own interpreter. It needs no shell,
so distroless algorithm images work too.
"""

import os
import sys

PYTHON_NAMES = {"python", "python3"}


def main(argv: list[str]) -> None:
    args = argv[1:]
    if args and os.path.basename(args[0]) in PYTHON_NAMES:
        args = args[1:]
    if not args:
        args = ["-m", "batch_runner", "--help"]
    os.execv(sys.executable, [sys.executable, *args])


if __name__ == "__main__":
    main(sys.argv)
