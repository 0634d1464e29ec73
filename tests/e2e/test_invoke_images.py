"""An invoke-mode image end to end on the local stack, driven by the real gcapi client: the
grand-challenge-style example in invoke mode serves three jobs from one start of its server,
which loads its model once (the local backend keeps the image's runner warm between jobs)."""

from __future__ import annotations

from typer.testing import CliRunner

from gantry.cli import app
from tests.e2e.conftest import Platform, make_image
from tests.e2e.test_oci_images import check_segmentation, platform, register, run_job, why
from tests.example_images import gc_template_image, gc_template_model

__all__ = ["platform"]


def test_three_jobs_are_served_by_one_start_of_the_invoke_server(platform: Platform) -> None:
    slug = register(
        platform, "GC template invoke", gc_template_image("invoke"), ["segmentation", "results"]
    )
    state_dir = str(platform.stack.state_dir)
    args = [
        "algorithms",
        "models",
        "upload",
        slug,
        str(gc_template_model()),
        "--state-dir",
        state_dir,
    ]
    added = CliRunner().invoke(app, args)
    assert added.exit_code == 0, added.output
    served = []
    for number in range(3):
        case = make_image(platform.workdir / f"invoke-{number}.mha", offset=float(number))
        client, job = run_job(platform, slug, case)
        assert job.status == "Succeeded", why(platform, job)
        results = {output.interface.slug: output for output in job.outputs}["results"].value
        assert results["model_version"] == "weights-v1"
        assert results["user"] == "user"
        served.append(results)
        check_segmentation(platform, client, job, case)
    # One server process, one model load, three invocations in turn.
    assert len({r["server_pid"] for r in served}) == 1
    assert [r["model_loads"] for r in served] == [1, 1, 1]
    assert [r["invocations"] for r in served] == [1, 2, 3]
