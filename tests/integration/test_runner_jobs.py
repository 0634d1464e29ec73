"""The runner end to end, in-process, against a moto server: success and failure paths."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy
import pytest
import SimpleITK

from gantry.contract import ResultVerificationError, verify_result
from gantry.kinds import spec
from tests.integration.runner_binary import selected_binary

PY = sys.executable


def example(name: str, python: str = PY) -> list[str]:
    return [python, f"examples/algorithms/{name}/main.py"]


def inline(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


def ct_image_bytes(tmp_path) -> tuple[bytes, SimpleITK.Image]:
    array = numpy.linspace(-500, 500, 4 * 6 * 5).reshape(4, 6, 5).astype(numpy.int16)
    image = SimpleITK.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-10.0, 5.0, 3.0))
    path = tmp_path / "ct.mha"
    SimpleITK.WriteImage(image, str(path))
    return path.read_bytes(), image


@pytest.mark.slow
def test_threshold_segments_and_keeps_geometry(runner_job, tmp_path):
    body, image = ct_image_bytes(tmp_path)
    runner_job.add_input("images/ct-image/3e2b7c44-0000-4000-8000-000000000001.mha", body)
    runner_job.outputs = [
        {"slug": "segmentation", "kind": "SEG", "relative_path": "images/segmentation"},
        {"slug": "results-json-file", "kind": "JSON", "relative_path": "results.json"},
    ]
    result, _ = runner_job.run(example("threshold"))

    assert result.return_code == 0, result.user_safe_error_message
    assert result.user_safe_error_message is None
    assert result.output_errors == {}
    assert result.sandboxed is True
    keys = runner_job.output_keys()
    (seg_key,) = [k for k in keys if k.startswith("images/segmentation/")]
    assert seg_key.endswith(".mha")
    assert "results.json" in keys
    seg_path = tmp_path / "seg.mha"
    seg_path.write_bytes(runner_job.read_output(seg_key))
    segmentation = SimpleITK.ReadImage(str(seg_path))
    assert segmentation.GetSpacing() == pytest.approx(image.GetSpacing())
    assert segmentation.GetOrigin() == pytest.approx(image.GetOrigin())
    expected = int((SimpleITK.GetArrayFromImage(image) > 0).sum())
    assert int(SimpleITK.GetArrayFromImage(segmentation).sum()) == expected
    assert json.loads(runner_job.read_output("results.json"))["foreground_voxels"] == expected
    assert runner_job.verified() == result


def test_json_io_with_schemas(runner_job):
    runner_job.add_input("threshold.json", b"0.5")
    box = {
        "type": "2D bounding box",
        "corners": [[0, 0, 0], [10, 0, 0], [10, 10, 0], [0, 10, 0]],
        "version": {"major": 1, "minor": 0},
    }
    runner_job.add_input("bounding-box.json", json.dumps(box).encode())
    runner_job.outputs = [
        {
            "slug": "score",
            "kind": "FLT",
            "relative_path": "score.json",
            "schemas": [spec("FLT").schema],
        },
        {
            "slug": "box",
            "kind": "2DBB",
            "relative_path": "shifted-bounding-box.json",
            "schemas": [spec("2DBB").schema],
        },
    ]
    result, _ = runner_job.run(example("json-io"))
    assert result.return_code == 0
    assert result.output_errors == {}, result.output_errors
    assert json.loads(runner_job.read_output("score.json")) == 1.0
    shifted = json.loads(runner_job.read_output("shifted-bounding-box.json"))
    assert shifted["corners"][1] == [10.5, 0, 0]


def test_signature_verifies_and_tampering_fails(runner_job):
    result, _ = runner_job.run(example("noop"))
    body, signature = runner_job.stored_result()
    assert (
        verify_result(
            body=body, signature_hex=signature, key_hex=runner_job.key, expected_pk=runner_job.pk
        )
        == result
    )
    tampered = body.replace(b'"return_code":0', b'"return_code":1')
    assert tampered != body
    with pytest.raises(ResultVerificationError):
        verify_result(
            body=tampered,
            signature_hex=signature,
            key_hex=runner_job.key,
            expected_pk=runner_job.pk,
        )
    with pytest.raises(ResultVerificationError):
        verify_result(
            body=body, signature_hex=signature, key_hex="00" * 32, expected_pk=runner_job.pk
        )


def test_crash_reports_last_stderr_line(runner_job):
    result, lines = runner_job.run(example("crash"))
    assert result.return_code == 1
    assert result.user_safe_error_message == "RuntimeError: model weights not found"
    assert result.user_process_last_stdout_lines == ["loading model"]
    assert result.outputs == []
    user_lines = [line for line in lines if not line["internal"]]
    assert {
        "log": "loading model",
        "level": "INFO",
        "source": "stdout",
        "internal": False,
        "task": runner_job.pk,
    } in user_lines
    assert any(line["level"] == "WARNING" and line["source"] == "stderr" for line in user_lines)
    assert runner_job.verified().return_code == 1


def test_exit_code_without_stderr(runner_job):
    result, _ = runner_job.run(inline("import sys; sys.exit(3)"))
    assert result.user_safe_error_message == "The algorithm exited with code 3"


def test_killed_by_sigkill_is_reported_as_out_of_memory(runner_job):
    result, _ = runner_job.run(inline("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    assert result.return_code == 137
    assert result.user_safe_error_message == (
        "The container was killed as it exceeded its memory limit"
    )


@pytest.mark.parametrize("sandbox", ["required", "off"])
def test_timeout_kills_the_whole_process_tree(runner_job, sandbox):
    runner_job.timeout = 1
    # Tagged with the job, so a run of this test on another worker is not taken for ours.
    command = [*example("timeout"), runner_job.pk]
    if sandbox == "off":
        command = ["/usr/bin/python3", runner_job.reachable(command[1]), runner_job.pk]
    result, _ = runner_job.run(command, sandbox=sandbox)
    assert result.user_safe_error_message == "Time limit exceeded"
    assert result.exec_duration < 10
    leftovers = []
    import os

    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read()
                if b"time.sleep(3600)" in cmdline and runner_job.pk.encode() in cmdline:
                    leftovers.append(pid)
        except OSError:
            pass
    assert leftovers == []


def test_no_output_names_each_missing_output(runner_job):
    runner_job.outputs = [
        {"slug": "score", "kind": "FLT", "relative_path": "score.json"},
        {"slug": "segmentation", "kind": "SEG", "relative_path": "images/segmentation"},
        {"slug": "report", "kind": "PDF", "relative_path": "report.pdf"},
    ]
    result, _ = runner_job.run(example("no-output"))
    assert result.return_code == 0
    assert result.output_errors == {
        "score": "Output file 'score.json' was not produced",
        "segmentation": "Output directory 'images/segmentation' is empty",
        "report": "Output file 'report.pdf' was not produced",
    }
    assert result.user_safe_error_message == "Output file 'score.json' was not produced"


def test_invalid_json_output(runner_job):
    runner_job.outputs = [{"slug": "score", "kind": "FLT", "relative_path": "score.json"}]
    result, _ = runner_job.run(example("invalid-json"))
    assert result.user_safe_error_message == "The output file 'score.json' is not valid json"


def test_json_failing_its_schema(runner_job):
    runner_job.outputs = [
        {
            "slug": "score",
            "kind": "FLT",
            "relative_path": "score.json",
            "schemas": [spec("FLT").schema, {"type": "number", "maximum": 1}],
        },
    ]
    code = """
    import os
    open(os.environ["OUTPUT_DIR"] + "/score.json", "w").write("5")
    """
    result, _ = runner_job.run(inline(code))
    message = result.output_errors["score"]
    assert message.startswith("The output file 'score.json' is not valid: ")
    assert "5" in message


def test_image_directory_with_two_images_and_unreadable_image(runner_job):
    runner_job.outputs = [
        {"slug": "two", "kind": "SEG", "relative_path": "images/two"},
        {"slug": "broken", "kind": "IMG", "relative_path": "images/broken"},
        {"slug": "tiff", "kind": "IMG", "relative_path": "images/tiff"},
    ]
    code = """
    import os, numpy, SimpleITK, tifffile
    out = os.environ["OUTPUT_DIR"]
    for sub in ("two", "broken", "tiff"):
        os.makedirs(f"{out}/images/{sub}")
    image = SimpleITK.GetImageFromArray(numpy.zeros((3, 3), numpy.uint8))
    SimpleITK.WriteImage(image, f"{out}/images/two/a.mha")
    SimpleITK.WriteImage(image, f"{out}/images/two/b.mha")
    open(f"{out}/images/broken/c.mha", "wb").write(b"not an image")
    tifffile.imwrite(f"{out}/images/tiff/d.tif", numpy.zeros((4, 4), numpy.uint8))
    """
    result, _ = runner_job.run(inline(code))
    expected = {"two": "Only 1 image should be produced in 'images/two', we found 2"}
    if selected_binary() is None:
        # The static runner has no SimpleITK: image headers are left to the platform's checks.
        expected["broken"] = "The image 'c.mha' in 'images/broken' could not be read"
    assert result.output_errors == expected


def test_symlink_in_output_is_rejected_and_nothing_uploaded(runner_job):
    result, _ = runner_job.run(example("symlink-escape"))
    assert result.user_safe_error_message == (
        "Output 'passwd.txt' is a symbolic link, which is not allowed"
    )
    assert result.outputs == []
    assert runner_job.output_keys() == [".sagemaker_shim/inference_result.json"]


def test_fifo_in_output_is_rejected(runner_job):
    result, _ = runner_job.run(inline("import os; os.mkfifo(os.environ['OUTPUT_DIR'] + '/p')"))
    assert result.user_safe_error_message == "Output 'p' is not a regular file"


def test_output_cannot_forge_the_result_file(runner_job):
    code = """
    import os
    os.makedirs(os.environ["OUTPUT_DIR"] + "/.sagemaker_shim")
    open(os.environ["OUTPUT_DIR"] + "/.sagemaker_shim/inference_result.json", "w").write("{}")
    """
    result, _ = runner_job.run(inline(code))
    assert result.user_safe_error_message.startswith(
        "Output '.sagemaker_shim/inference_result.json' uses the reserved folder"
    )
    assert runner_job.verified().pk == runner_job.pk


def test_bad_user_is_a_signed_setup_failure(runner_job):
    result, _ = runner_job.run(example("noop"), algorithm_user="no-such-user")
    assert result.return_code == 125
    assert result.user_safe_error_message == "The algorithm user 'no-such-user' does not exist"
    assert runner_job.verified().user_safe_error_message == result.user_safe_error_message


def test_missing_and_not_executable_commands(runner_job):
    result, _ = runner_job.run(["no-such-binary-xyz"])
    assert result.return_code == 127
    assert (
        result.user_safe_error_message == "The algorithm command 'no-such-binary-xyz' was not found"
    )
    result, _ = runner_job.run(["examples/algorithms/noop/main.py"])
    assert result.return_code == 126
    assert result.user_safe_error_message == (
        "The algorithm command 'examples/algorithms/noop/main.py' is not executable"
    )


def test_unsandboxed_runs_as_nobody_with_clean_environment(runner_job, monkeypatch):
    monkeypatch.setenv("GANTRY_SIGNING_KEY_HEX", runner_job.key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/credentials/x")
    monkeypatch.setenv("KEEP_ME", "yes")
    code = """
    import json, os
    home = os.environ["HOME"]
    open(os.path.join(home, "probe"), "w").write("x")
    report = {"uid": os.getuid(), "gid": os.getgid(), "env": sorted(os.environ), "home": home}
    open(os.environ["OUTPUT_DIR"] + "/report.json", "w").write(json.dumps(report))
    """
    import textwrap as tw

    result, _ = runner_job.run(["/usr/bin/python3", "-c", tw.dedent(code)], sandbox="off")
    assert result.return_code == 0, result.user_process_last_stderr_lines
    assert result.sandboxed is False
    report = json.loads(runner_job.read_output("report.json"))
    assert (report["uid"], report["gid"]) == (65534, 65534)
    assert "KEEP_ME" in report["env"]
    leaked = [k for k in report["env"] if k.startswith(("GANTRY_", "AWS_"))]
    assert leaked == []
