"""The ``gantry`` API commands against the local stack over real HTTPS: interfaces and
algorithms, jobs run with uploads and JSON values through the real runner, list and show,
the S3 drop folder, and the errors a user meets (one line, exit status 1, no traceback)."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from gantry.cli import app
from gantry.commands.local import connection_for
from gantry.local.demo import make_ct_like_image
from gantry.local.stack import LocalStack
from tests.conftest import serve_local_stack

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "algorithms"
BOX = {
    "type": "2D bounding box",
    "version": {"major": 1, "minor": 0},
    "corners": [[0, 0, 0], [10, 0, 0], [10, 10, 0], [0, 10, 0]],
}
INTERFACES = [
    ("CT Image", "Image", "images/ct-image"),
    ("Segmentation", "Segmentation", "images/segmentation"),
    ("Results", "Anything", "results.json"),
    ("Threshold", "Float", "threshold.json"),
    ("Bounding Box", "2D bounding box", "bounding-box.json"),
    ("Score", "Float", "score.json"),
    ("Shifted Bounding Box", "2D bounding box", "shifted-bounding-box.json"),
]
SEGMENTS = [
    {"name": "background", "voxel_value": 0, "visible": False},
    {"name": "body", "voxel_value": 1, "visible": True},
]
WAIT = ["--timeout", "120"]


@dataclass
class Cli:
    stack: LocalStack
    token: str
    state_dir: Path

    @property
    def options(self) -> list[str]:
        ca_file = str(self.state_dir / "tls" / "ca.pem")
        return ["--api-url", self.stack.api_url, "--token", self.token, "--ca-file", ca_file]

    def invoke(self, *args: str, env: dict[str, str] | None = None) -> Result:
        # Wide enough that tables keep each value on one line.
        return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **(env or {})})

    def __call__(self, *args: str) -> Result:
        """The command with the connection given as options."""
        return self.invoke(*args, *self.options)


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


def one_line_error(result: Result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.strip()]
    return lines[-1]


def started_job(output: str) -> str:
    match = re.search(r"Job (\S+) started", output)
    assert match, output
    return match.group(1)


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    state_dir = tmp_path_factory.mktemp("state")
    stack = serve_local_stack("gantry-cli", state_dir)
    try:
        token = stack.ctx.store.users.create_token("alice")
        # What `gantry local up` writes, for the commands that read local.json.
        connection_for(stack, token, state_dir).write(state_dir)
        cli = Cli(stack, token, state_dir)
        segments = state_dir / "segments.json"
        segments.write_text(json.dumps(SEGMENTS))
        for title, kind, path in INTERFACES:
            extra = ["--overlay-segments", str(segments)] if kind == "Segmentation" else []
            ok(
                cli(
                    "interfaces",
                    "create",
                    "--title",
                    title,
                    "--kind",
                    kind,
                    "--relative-path",
                    path,
                    *extra,
                )
            )
        command = shlex.join([sys.executable, "main.py"])
        for title, inputs, outputs, example in (
            ("Threshold segmentation", ["ct-image"], ["segmentation", "results"], "threshold"),
            (
                "JSON IO",
                ["threshold", "bounding-box"],
                ["score", "shifted-bounding-box"],
                "json-io",
            ),
            ("Crash", ["threshold"], ["score"], "crash"),
            ("Never Ends", ["threshold"], ["score"], "timeout"),
        ):
            ok(
                cli(
                    "algorithms",
                    "create",
                    "--title",
                    title,
                    *(arg for slug in inputs for arg in ("--input", slug)),
                    *(arg for slug in outputs for arg in ("--output", slug)),
                    "--time-limit",
                    "300",
                    "--user",
                    "dropbox",
                    "--image",
                    "local",
                    "--command",
                    command,
                    "--workdir",
                    str(EXAMPLES / example),
                )
            )
        yield cli
    finally:
        stack.stop()


def api_get(cli: Cli, path: str, **params: Any) -> Any:
    from gantry.commands.client import GantryClient

    with GantryClient.connect(state_dir=cli.state_dir) as client:
        return client.get(path, **params)


# --- catalogue -----------------------------------------------------------------------------


def test_interfaces_create_sends_schema_and_storage_and_lists_them(cli, tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "array", "items": {"type": "string"}}))
    output = ok(
        cli(
            "interfaces",
            "create",
            "--title",
            "Labels",
            "--kind",
            "Anything",
            "--relative-path",
            "labels.json",
            "--schema",
            str(schema),
            "--no-store-in-database",
        )
    )
    assert "Created interface labels" in output
    (labels,) = api_get(cli, "components/interfaces/", slug="labels")["results"]
    assert labels["schema"] == {"type": "array", "items": {"type": "string"}}
    assert labels["store_in_database"] is False

    listed = ok(cli("interfaces", "list"))
    for slug in ("ct-image", "segmentation", "bounding-box", "labels"):
        assert slug in listed
    assert "2D bounding box" in listed


def test_algorithms_list_shows_inputs_and_outputs(cli):
    listed = ok(cli("algorithms", "list"))
    assert "threshold-segmentation" in listed
    assert "ct-image → segmentation, results" in listed
    assert "json-io" in listed


def test_the_connection_comes_from_the_environment_or_local_json(cli):
    env = {
        "GANTRY_API_URL": cli.stack.api_url,
        "GANTRY_TOKEN": cli.token,
        "GANTRY_CA_FILE": str(cli.state_dir / "tls" / "ca.pem"),
    }
    assert "json-io" in ok(cli.invoke("algorithms", "list", env=env))
    assert "json-io" in ok(cli.invoke("algorithms", "list", "--state-dir", str(cli.state_dir)))


# --- jobs ----------------------------------------------------------------------------------


def test_run_segments_an_uploaded_image_and_downloads_the_outputs(cli, tmp_path):
    import SimpleITK

    ct = make_ct_like_image(tmp_path / "case01.mha", size=24)
    out = tmp_path / "out"
    output = ok(
        cli(
            "jobs",
            "run",
            "threshold-segmentation",
            "--input",
            f"ct-image={ct}",
            "--output-dir",
            str(out),
            *WAIT,
        )
    )
    assert "Succeeded" in output
    (segmentation_file,) = (out / "images" / "segmentation").glob("*.mha")
    assert str(segmentation_file) in output
    segmentation = SimpleITK.ReadImage(str(segmentation_file))
    image = SimpleITK.ReadImage(str(ct))
    assert segmentation.GetSpacing() == image.GetSpacing()
    assert segmentation.GetSize() == image.GetSize()
    assert json.loads((out / "results.json").read_text())["foreground_voxels"] > 0


def test_a_file_of_several_parts_is_stored_whole_and_in_order(cli, tmp_path, monkeypatch):
    from gantry.commands import client as client_module

    # Parts are sent several at a time; the object is still the file, part after part.
    monkeypatch.setattr(client_module, "PART_SIZE", 5 * 1024 * 1024)
    pieces = [hashlib.sha256(str(n).encode()).digest() * (5 * 1024 * 1024 // 32) for n in range(5)]
    path = tmp_path / "volume.raw"
    path.write_bytes(b"".join(pieces) + b"tail")
    with client_module.GantryClient.connect(state_dir=cli.state_dir) as client:
        upload = client.upload(path)
    assert upload["status"] == "Completed"
    s3, bucket = cli.stack.ctx.clients.s3, cli.stack.ctx.settings.bucket_name
    stored = s3.get_object(Bucket=bucket, Key=upload["key"])
    assert stored["Body"].read() == path.read_bytes()
    assert stored["ETag"].endswith('-6"')


def test_run_with_json_values(cli, tmp_path):
    out = tmp_path / "out"
    output = ok(
        cli(
            "jobs",
            "run",
            "json-io",
            "--input",
            "threshold=2.5",
            "--input",
            f"bounding-box={json.dumps(BOX)}",
            "--output-dir",
            str(out),
            *WAIT,
        )
    )
    assert "Succeeded" in output
    assert json.loads((out / "score.json").read_text()) == 5.0
    shifted = json.loads((out / "shifted-bounding-box.json").read_text())
    assert [corner[0] for corner in shifted["corners"]] == [2.5, 12.5, 12.5, 2.5]


def test_run_uploads_a_json_file_given_as_a_path(cli, tmp_path):
    box = tmp_path / "box.json"
    box.write_text(json.dumps(BOX))
    out = tmp_path / "out"
    ok(
        cli(
            "jobs",
            "run",
            "json-io",
            "--input",
            "threshold=1",
            "--input",
            f"bounding-box={box}",
            "--output-dir",
            str(out),
            *WAIT,
        )
    )
    shifted = json.loads((out / "shifted-bounding-box.json").read_text())
    assert [corner[0] for corner in shifted["corners"]] == [1, 11, 11, 1]


def test_a_failing_job_exits_1_with_its_message_and_show_gives_its_logs(cli, tmp_path):
    result = cli("jobs", "run", "crash", "--input", "threshold=1", *WAIT)
    last = one_line_error(result)
    pk = started_job(result.output)
    job = api_get(cli, f"algorithms/jobs/{pk}/")
    assert job["status"] == "Failed"
    assert last.startswith(f"Job {pk} Failed: ")
    assert job["error_message"] in last

    shown = ok(cli("jobs", "show", pk))
    assert "Failed" in shown
    assert "loading model" in shown  # stdout
    assert "RuntimeError: model weights not found" in shown  # stderr
    assert "input threshold" in shown

    crashed = ok(cli("jobs", "list", "--algorithm", "crash"))
    assert pk in crashed
    assert pk not in ok(cli("jobs", "list", "--algorithm", "json-io"))


def test_cancel_stops_a_running_job_and_repeating_it_is_harmless(cli):
    pk = started_job(ok(cli("jobs", "run", "never-ends", "--input", "threshold=1", "--no-wait")))
    deadline = time.monotonic() + 120
    while (job := api_get(cli, f"algorithms/jobs/{pk}/"))["status"] != "Executing":
        assert time.monotonic() < deadline, job["status"]
        time.sleep(0.2)

    output = ok(cli("jobs", "cancel", pk))
    assert f"Job {pk} Cancelled" in output
    # The local compute job (the runner and the algorithm's processes) is stopped.
    compute = cli.stack.ctx.compute
    while (state := compute.describe(job_id := api_job_compute_id(cli, pk))).status == "running":
        assert time.monotonic() < deadline, job_id
        time.sleep(0.2)
    assert state.reason == "Cancelled by Gantry"
    assert api_get(cli, f"algorithms/jobs/{pk}/")["status"] == "Cancelled"

    assert f"Job {pk} Cancelled" in ok(cli("jobs", "cancel", pk))
    assert "Cancelled" in ok(cli("jobs", "show", pk))
    error = one_line_error(cli("jobs", "cancel", "00000000-0000-0000-0000-000000000000"))
    assert "not found" in error


def api_job_compute_id(cli: Cli, pk: str) -> str:
    job_id = cli.stack.ctx.store.jobs.get(pk).compute_job_id
    assert job_id
    return job_id


def test_token_create_list_and_revoke_against_the_running_stack(cli):
    def as_user(token: str) -> list[str]:
        return [*cli.options[:2], "--token", token, *cli.options[4:]]

    # A user makes a token of their own through the API the other commands use.
    token = ok(cli("token", "create", "--expires-in", "7")).strip()
    assert token.startswith("gnt_")
    ok(cli.invoke("algorithms", "list", *as_user(token)))  # the new token works
    listed = ok(cli("token", "list"))
    rows = [line for line in listed.splitlines() if " alice " in f" {line} "]
    assert len(rows) == 2  # the one the commands use, and the new one (which expires)
    [row] = [line for line in rows if "never" not in line]
    pk = row.split()[0]
    assert f"Token {pk} revoked" in ok(cli("token", "revoke", pk))
    assert "Invalid token" in one_line_error(cli.invoke("algorithms", "list", *as_user(token)))

    # Others' tokens are an admin's to make (as the README's `--user alice` with local up's).
    assert "Only admins" in one_line_error(cli("token", "create", "--user", "erin"))
    admin = cli.stack.ctx.store.users.create_token("local", is_admin=True)
    erins = ok(cli.invoke("token", "create", "--user", "erin", *as_user(admin))).strip()
    ok(cli.invoke("algorithms", "list", *as_user(erins)))
    assert "--admin works only" in one_line_error(cli("token", "create", "--admin"))


def test_share_a_jobs_data_with_viewers_and_editors(cli):
    output = ok(
        cli(
            "jobs",
            "run",
            "json-io",
            "--input",
            "threshold=3",
            "--input",
            f"bounding-box={json.dumps(BOX)}",
            "--no-wait",
        )
    )
    pk = started_job(output)
    cli.stack.ctx.store.users.ensure_user("erin")
    shown = ok(cli("jobs", "share", pk, "--viewer", "erin", "--editors"))
    assert f"Job {pk}: viewers erin; editors see its data" in " ".join(shown.split())
    job = api_get(cli, f"algorithms/jobs/{pk}/")
    assert (job["viewers"], job["share_with_editors"]) == (["erin"], True)
    shown = ok(cli("jobs", "share", pk, "--no-viewers", "--no-editors"))
    assert "viewers nobody; editors do not see its data" in " ".join(shown.split())
    job = api_get(cli, f"algorithms/jobs/{pk}/")
    assert (job["viewers"], job["share_with_editors"]) == ([], False)
    assert "Unknown users: nobody-here" in one_line_error(
        cli("jobs", "share", pk, "--viewer", "nobody-here")
    )
    assert "Nothing to change" in one_line_error(cli("jobs", "share", pk))


def test_no_wait_returns_at_once_and_the_job_appears_in_the_list(cli):
    output = ok(
        cli(
            "jobs",
            "run",
            "json-io",
            "--input",
            "threshold=3",
            "--input",
            f"bounding-box={json.dumps(BOX)}",
            "--no-wait",
        )
    )
    pk = started_job(output)
    assert "Succeeded" not in output
    listed = ok(cli("jobs", "list"))
    assert pk in listed
    assert "json-io" in listed


# --- drop folder ---------------------------------------------------------------------------


def test_drop_a_file_and_wait_for_its_results(cli, tmp_path):
    ct = make_ct_like_image(tmp_path / "scan.mha", size=24)
    args = ["drop", str(ct), "--algorithm", "threshold-segmentation", "--case", "patient-1"]
    args += ["--wait", *WAIT, "--state-dir", str(cli.state_dir)]
    output = ok(cli.invoke(*args))
    assert "dropbox/threshold-segmentation/patient-1/" in output
    first = re.search(r"Job (\S+) Succeeded", output)
    assert first, output
    for name in ("job.json", "results.json", "images/segmentation/"):
        assert name in output
    body = cli.stack.ctx.clients.s3.get_object(
        Bucket=cli.stack.settings.bucket_name,
        Key="dropbox-results/threshold-segmentation/patient-1/results.json",
    )["Body"].read()
    assert json.loads(body)["foreground_voxels"] > 0

    # The same case again: the earlier job.json must not pass for this drop's result, and
    # only this job's image is listed, not the one left from the first run.
    again = ok(cli.invoke(*args))
    second = re.search(r"Job (\S+) Succeeded", again)
    assert second, again
    assert second.group(1) != first.group(1)
    assert again.count("images/segmentation/") == 1


def test_drop_a_folder_as_one_case_with_its_inputs_json(cli, tmp_path):
    case = tmp_path / "case-7"
    case.mkdir()
    (case / "t.json").write_text("2")
    (case / "box.json").write_text(json.dumps(BOX))
    (case / "inputs.json").write_text(
        json.dumps({"threshold": "t.json", "bounding-box": "box.json"})
    )
    output = ok(
        cli.invoke(
            "drop",
            str(case),
            "--algorithm",
            "json-io",
            "--wait",
            *WAIT,
            "--state-dir",
            str(cli.state_dir),
        )
    )
    assert "Dropped 3 file(s)" in output
    assert "score.json" in output
    body = cli.stack.ctx.clients.s3.get_object(
        Bucket=cli.stack.settings.bucket_name, Key="dropbox-results/json-io/case-7/score.json"
    )["Body"].read()
    assert json.loads(body) == 4.0


def test_drop_for_an_unknown_algorithm_reports_why_no_job_started(cli, tmp_path):
    file = tmp_path / "scan.mha"
    make_ct_like_image(file, size=8)
    result = cli.invoke(
        "drop",
        str(file),
        "--algorithm",
        "no-such-algorithm",
        "--wait",
        *WAIT,
        "--state-dir",
        str(cli.state_dir),
    )
    assert one_line_error(result) == "No job for this case: Unknown algorithm 'no-such-algorithm'"


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["jobs", "run", "nope", "--input", "x=1"], "Algorithm 'nope' not found"),
        (
            ["jobs", "run", "threshold-segmentation", "--input", "ct-image=/no/such/file.mha"],
            "Input 'ct-image' (Image): no such file /no/such/file.mha",
        ),
        (
            ["jobs", "run", "json-io", "--input", "threshold=abc"],
            "Input 'threshold': 'abc' is neither a file nor JSON",
        ),
        (
            ["jobs", "run", "json-io", "--input", "score=1"],
            "'score' is not an input of json-io (inputs: bounding-box, threshold)",
        ),
        (
            ["jobs", "run", "json-io", "--input", "threshold=1"],
            "HTTP 400: inputs: The inputs [threshold] do not match",
        ),
        (
            ["algorithms", "create", "--title", "Bad", "--input", "xyz", "--output", "score"],
            "HTTP 400: interfaces: Unknown interface(s): xyz; create them first",
        ),
        (
            [
                "algorithms",
                "create",
                "--title",
                "Huge",
                "--input",
                "threshold",
                "--output",
                "score",
                "--memory-gb",
                "100000",
            ],
            "HTTP 400: requires_memory_gb: ",
        ),
        (["jobs", "show", "0000"], "HTTP 404: "),
        (
            ["interfaces", "create", "--title", "X", "--kind", "Nope", "--relative-path", "x"],
            "HTTP 400: kind: ",
        ),
    ],
)
def test_errors_are_one_line(cli, args, expected):
    assert expected in one_line_error(cli(*args))


def test_bad_token_is_one_line(cli):
    ca_file = str(cli.state_dir / "tls" / "ca.pem")
    result = cli.invoke(
        "interfaces", "list", "--api-url", cli.stack.api_url, "--token", "bad", "--ca-file", ca_file
    )
    assert one_line_error(result).startswith("HTTP 401: ")
    assert result.output.strip().count("\n") == 0


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--api-url", "https://127.0.0.1:9/api/v1/", "--token", "t"], "Cannot reach the API"),
        (["--token", "t"], "certificate this machine does not trust"),
        (["--token", "t", "--ca-file", "/no/such/ca.pem"], "Cannot use the CA file"),
        ([], "No Gantry API to talk to"),
    ],
)
def test_connection_problems_are_one_line(cli, tmp_path, options, expected):
    if "--api-url" not in options and options:
        options = ["--api-url", cli.stack.api_url, *options]
    result = cli.invoke("jobs", "list", *options, "--state-dir", str(tmp_path))
    assert expected in one_line_error(result)
    assert result.output.strip().count("\n") == 0


def test_drop_errors_are_one_line(cli, tmp_path):
    missing = one_line_error(
        cli.invoke(
            "drop",
            str(tmp_path / "nope.mha"),
            "--algorithm",
            "json-io",
            "--state-dir",
            str(cli.state_dir),
        )
    )
    assert missing == f"No such file or folder: {tmp_path / 'nope.mha'}"
    (tmp_path / "a.json").write_text("1")
    (tmp_path / "b.json").write_text("2")
    several = one_line_error(
        cli.invoke(
            "drop", str(tmp_path), "--algorithm", "json-io", "--state-dir", str(cli.state_dir)
        )
    )
    assert "add an inputs.json" in several
    nowhere = one_line_error(
        cli.invoke(
            "drop",
            str(tmp_path / "a.json"),
            "--algorithm",
            "json-io",
            "--state-dir",
            str(tmp_path / "empty"),
        )
    )
    assert nowhere.startswith("No drop folder to write to")


def test_algorithms_create_takes_memory_and_gpu_like_the_api(cli):
    output = ok(
        cli(
            "algorithms", "create", "--title", "Needs memory", "--input", "threshold",
            "--output", "score", "--memory-gb", "6", "--gpu", "T4",
        )
    )  # fmt: skip
    slug = re.search(r"Created algorithm (\S+)", output).group(1)
    algorithm = cli.stack.ctx.store.algorithms.get_by_slug(slug)
    assert algorithm.requires_memory_gb == 6
    assert algorithm.requires_gpu_type.value == "T4"


READS_MODEL = """
import json
weight = json.load(open("/opt/ml/model/weights.json"))["weight"]
threshold = json.load(open("/input/threshold.json"))
json.dump(threshold * weight, open("/output/score.json", "w"))
"""


def test_models_uploaded_to_an_algorithm_are_at_opt_ml_model_and_jobs_name_theirs(cli, tmp_path):
    import shutil
    import tempfile

    code = Path(tempfile.mkdtemp(prefix="gantry-model-algorithm-"))
    try:
        code.chmod(0o755)
        (code / "main.py").write_text(READS_MODEL)
        (code / "main.py").chmod(0o644)
        ok(
            cli(
                "algorithms", "create", "--title", "Weighted", "--input", "threshold",
                "--output", "score", "--image", "local",
                "--command", shlex.join([sys.executable, "main.py"]), "--workdir", str(code),
            )
        )  # fmt: skip
        # Without a model the algorithm finds nothing there.
        result = cli("jobs", "run", "weighted", "--input", "threshold=2", *WAIT)
        assert "No such file or directory: '/opt/ml/model/weights.json'" in result.output

        def upload(weight: int) -> str:
            model = tmp_path / f"model-{weight}"
            model.mkdir()
            (model / "weights.json").write_text(f'{{"weight": {weight}}}')
            uploaded = ok(cli("algorithms", "models", "upload", "weighted", str(model)))
            assert "next jobs use it" in uploaded
            imported = re.search(r"Imported model (\S+)", uploaded)
            assert imported, uploaded
            return imported.group(1)

        def run(name: str) -> tuple[float, dict]:
            out = tmp_path / name
            output = ok(
                cli(
                    "jobs", "run", "weighted", "--input", "threshold=2",
                    "--output-dir", str(out), *WAIT,
                )
            )  # fmt: skip
            started = re.search(r"Job (\S+) started", output)
            assert started, output
            pk = started.group(1)
            job = cli.stack.ctx.store.jobs.get(pk)
            return json.loads((out / "score.json").read_text()), job

        first = upload(3)
        second = upload(5)
        assert run("second")[0] == 10
        ok(cli("algorithms", "models", "activate", first))
        score, job = run("first")
        assert score == 6
        models = cli.stack.ctx.store.models
        assert (job.algorithm_model, job.algorithm_model_sha256) == (
            first,
            models.get(first).sha256,
        )
        shown = ok(cli("jobs", "show", job.pk))
        assert re.search(r"model\s+" + re.escape(models.get(first).sha256 or "-"), shown)
        listed = ok(cli("algorithms", "models", "list", "weighted"))
        assert first in listed and second in listed
    finally:
        shutil.rmtree(code, ignore_errors=True)


def test_a_model_must_be_a_tarball(cli, tmp_path):
    not_a_tarball = tmp_path / "weights.json"
    not_a_tarball.write_text("{}")
    message = one_line_error(cli("algorithms", "models", "upload", "json-io", str(not_a_tarball)))
    assert "HTTP 400: user_upload: 'weights.json' is not a model tarball" in message


# --- archives ------------------------------------------------------------------------------


def test_archives_are_filled_and_run_from_the_command_line(cli, tmp_path):
    output = ok(cli("archives", "create", "--title", "CLI cases", "--user", "bob"))
    assert "Archive cli-cases created" in output
    for n in range(2):
        image = make_ct_like_image(tmp_path / f"case{n}.mha")
        output = ok(cli("archives", "add", "cli-cases", "--value", f"ct-image={image}"))
        assert "added to cli-cases" in output
    deadline = time.monotonic() + 120
    while any(
        i["pending"] for i in api_get(cli, "archives/items/", archive="cli-cases")["results"]
    ):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert "cli-cases" in ok(cli("archives", "list"))
    assert ok(cli("archives", "items", "cli-cases")).count("ct-image=image") == 2

    output = ok(
        cli("archives", "run", "threshold-segmentation", "cli-cases", "--write-back", *WAIT)
    )
    assert "over 2 items started" in output and "done: 2 Succeeded" in output
    # A second run finds both done.
    output = ok(cli("archives", "run", "threshold-segmentation", "cli-cases", *WAIT))
    assert "done: 2 skipped" in output

    error = one_line_error(cli("archives", "run", "threshold-segmentation", "no-such-archive"))
    assert "Archive 'no-such-archive' not found" in error
