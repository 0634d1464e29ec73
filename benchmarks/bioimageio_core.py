"""Predict with bioimageio.core, in its own environment (``make bioimageio-oracle``).

Run by the tests (as an oracle) and by ``python -m benchmarks bioimageio`` (as the baseline),
never imported by Gantry: ``.venv-bioimageio/bin/python benchmarks/bioimageio_core.py REQUEST``
where REQUEST is a JSON file ``{rdf, input, outputs: {id: path}, blocksize: int | null,
repeat: int}``; the input and outputs are ``.npy`` files in the model's own axis order. Prints
``{seconds, cpu_seconds, peak_bytes}``: the fastest predict call (wall clock, and CPU time of
all its threads) and the memory it added to the process at
its peak (``/proc/self/clear_refs`` resets the high-water mark before each call).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def main(request_path: str) -> None:
    import numpy as np
    from bioimageio.core import create_prediction_pipeline, predict
    from bioimageio.spec import load_description

    request = json.loads(Path(request_path).read_text())
    # Format 0.4 descriptions can only be tiled once converted to 0.5.
    model = load_description(request["rdf"], format_version="latest", perform_io_checks=False)
    pipeline = create_prediction_pipeline(model)
    array = np.load(request["input"])
    input_id = str(model.inputs[0].id)
    best = float("inf")
    best_cpu = float("inf")
    peak = 0
    output = None
    for _ in range(int(request.get("repeat", 1))):
        Path("/proc/self/clear_refs").write_text("5")
        before = _rss("VmRSS")
        started = time.perf_counter()
        cpu = time.process_time()
        output = predict(
            model=pipeline, inputs={input_id: array}, blocksize_parameter=request.get("blocksize")
        )
        best = min(best, time.perf_counter() - started)
        best_cpu = min(best_cpu, time.process_time() - cpu)
        peak = max(peak, _rss("VmHWM") - before)
    assert output is not None
    for member, path in request["outputs"].items():
        np.save(path, output.members[member].data.to_numpy())
    print(json.dumps({"seconds": best, "cpu_seconds": best_cpu, "peak_bytes": peak}))


if __name__ == "__main__":
    main(sys.argv[1])
