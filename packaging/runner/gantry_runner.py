"""Entry point of the static runner (``gantry-runner``): the same CLI as ``python -m batch_runner``.

The layer's launcher moved the dynamic loader's variables (``LD_PRELOAD``, ...) out of the
way so that no library of the image is loaded into the runner; they belong to the algorithm's
environment, so they are put back before anything starts it.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

SAVED_PREFIX = "GANTRY_RUNNER_SAVED_"


def restore_loader_variables(environ: MutableMapping[str, str]) -> None:
    for name in [name for name in environ if name.startswith(SAVED_PREFIX)]:
        environ[name.removeprefix(SAVED_PREFIX)] = environ.pop(name)


if __name__ == "__main__":
    restore_loader_variables(os.environ)

    from batch_runner.cli import main

    raise SystemExit(main())
