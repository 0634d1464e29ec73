"""An image's root filesystem as / in the sandbox: its USER, ENV, WORKDIR, and nothing else.

The root filesystem is Debian's static busybox (tests/runner_rootfs.py): the algorithm runs
the image's own shell and tools, never the host's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from batch_runner.config import RunnerConfig
from gantry.resources import ENV_ALGORITHM_ENV, ENV_ALGORITHM_USER, ENV_ROOTFS
from tests.runner_rootfs import USER_UID, WORKDIR, add_file, build_busybox_root, remove

IMAGE_ENV = ("PATH=/usr/local/bin:/bin", "GREETING=hello from the image", "EMPTY=")

REPORT = r"""
out=/output/report.json
{
  printf '{"uid": %s, "gid": %s, "cwd": "%s", ' "$(id -u)" "$(id -g)" "$(pwd)"
  printf '"home": "%s", "path": "%s", "greeting": "%s", ' "$HOME" "$PATH" "$GREETING"
  printf '"leaked": "%s", ' "${RUNNER_ONLY_MARKER:-}${VIRTUAL_ENV:-}${AWS_ENDPOINT_URL:-}"
  printf '"root": "%s", ' "$(ls / | tr '\n' ' ')"
  printf '"host_python": %s, ' "$(test -e /usr/bin/python3 && echo true || echo false)"
  printf '"etc_writable": %s, ' "$(touch /etc/x 2>/dev/null && echo true || echo false)"
  printf '"input_writable": %s, ' "$(touch /input/x 2>/dev/null && echo true || echo false)"
  printf '"tmp_writable": %s, ' "$(touch /tmp/x 2>/dev/null && echo true || echo false)"
  printf '"input": "%s"}' "$(cat /input/threshold.json)"
} > "$out"
mkdir -p /output/nested && echo 1 > /output/nested/made.json
"""


@pytest.fixture(scope="module")
def rootfs():
    root = build_busybox_root()
    add_file(root, "/usr/local/bin/report", "#!/bin/sh\n" + REPORT)
    yield root
    remove(root)


def image_config(runner_job, rootfs: Path, command: list[str], **overrides) -> RunnerConfig:
    values = {
        "rootfs": rootfs,
        "image_env": IMAGE_ENV,
        "algorithm_user": "algorithm",
        "workdir": Path(WORKDIR),
    }
    values.update(overrides)
    return runner_job.config(command, **values)


def run_image(runner_job, rootfs, command, **overrides):
    config = image_config(runner_job, rootfs, command, **overrides)
    return runner_job.run(command, **{k: getattr(config, k) for k in _FIELDS})


_FIELDS = ("rootfs", "image_env", "algorithm_user", "workdir")


def test_image_runs_as_its_user_with_its_env_and_workdir_and_nothing_of_the_host(
    runner_job, rootfs, monkeypatch
):
    monkeypatch.setenv("RUNNER_ONLY_MARKER", "secret")
    runner_job.add_input("threshold.json", b"0.5")
    result, lines = run_image(runner_job, rootfs, ["report"])
    assert result.return_code == 0, (result.user_safe_error_message, lines)
    report = json.loads(runner_job.read_output("report.json"))
    assert (report["uid"], report["gid"]) == (USER_UID, 1000)
    assert report["cwd"] == WORKDIR
    # The image's home is on its read-only root: HOME is the private /tmp instead.
    assert report["home"] == "/tmp"
    assert report["path"] == "/usr/local/bin:/bin"
    assert report["greeting"] == "hello from the image"
    assert report["leaked"] == ""
    assert report["host_python"] is False
    assert set(report["root"].split()) == {
        "bin", "dev", "etc", "home", "input", "output", "proc", "root", "srv", "tmp", "usr"
    }  # fmt: skip
    assert report["etc_writable"] is False
    assert report["input_writable"] is False
    assert report["tmp_writable"] is True
    assert report["input"] == "0.5"
    assert runner_job.read_output("nested/made.json") == b"1\n"
    # The algorithm's files belong to its user on the host, and the runner can remove them.
    made = runner_job.output_root / "nested" / "made.json"
    if os.geteuid() == 0:
        assert made.stat().st_uid == USER_UID
    made.unlink()
    (runner_job.output_root / "nested").rmdir()


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("1000", (1000, 1000)),
        ("algorithm:staff", (1000, 50)),
        ("1000:50", (1000, 50)),
        # Not in the image's passwd: group 0, as Docker does.
        ("4242", (4242, 0)),
        ("4242:4242", (4242, 4242)),
    ],
)
def test_user_forms_are_resolved_in_the_images_own_passwd(runner_job, rootfs, user, expected):
    command = ["/bin/sh", "-c", 'echo "[$(id -u), $(id -g)]" > /output/id.json']
    result, lines = run_image(runner_job, rootfs, command, algorithm_user=user)
    assert result.return_code == 0, (result.user_safe_error_message, lines)
    assert tuple(json.loads(runner_job.read_output("id.json"))) == expected


@pytest.mark.parametrize("user", [None, "", "root", "0", "0:0", "root:staff"])
def test_an_image_running_as_root_is_refused(runner_job, rootfs, user):
    result, _ = run_image(runner_job, rootfs, ["report"], algorithm_user=user)
    assert result.return_code == 125
    assert result.user_safe_error_message.startswith("The algorithm image runs as root")
    assert "USER instruction" in result.user_safe_error_message
    assert runner_job.output_keys() == [".sagemaker_shim/inference_result.json"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"algorithm_user": "ghost"}, "The image's USER 'ghost' does not exist"),
        ({"algorithm_user": "algorithm:ghosts"}, "The image's group 'ghosts' does not exist"),
        ({"workdir": Path("/nowhere")}, "The image's WORKDIR '/nowhere' does not exist"),
    ],
)
def test_bad_image_configuration_fails_with_a_reason(runner_job, rootfs, overrides, message):
    result, _ = run_image(runner_job, rootfs, ["report"], **overrides)
    assert result.return_code == 125
    assert result.user_safe_error_message.startswith(message)


def test_command_is_looked_up_in_the_image_not_on_the_host(runner_job, rootfs):
    # python3 exists on the host, not in the image.
    result, _ = run_image(runner_job, rootfs, ["python3", "-c", "print(1)"])
    assert result.return_code == 127
    assert result.user_safe_error_message == "The algorithm command 'python3' was not found"
    result, _ = run_image(runner_job, rootfs, ["/etc/passwd"])
    assert result.return_code == 126


def test_exit_code_and_stderr_reach_the_result(runner_job, rootfs):
    command = ["/bin/sh", "-c", "echo working; echo 'model weights missing' >&2; exit 3"]
    result, _ = run_image(runner_job, rootfs, command)
    assert result.return_code == 3
    assert result.user_safe_error_message == "model weights missing"
    assert result.user_process_last_stdout_lines == ["working"]


def test_runner_reads_the_image_configuration_from_its_environment(rootfs, tmp_path):
    from batch_runner.config import encode_b64j

    env = {
        ENV_ROOTFS: str(rootfs),
        ENV_ALGORITHM_USER: "algorithm",
        ENV_ALGORITHM_ENV: encode_b64j(["A=1", "B=x=y"]),
        "GANTRY_ALGORITHM_CMD_B64J": encode_b64j(["report"]),
    }
    config = RunnerConfig.from_env(env)
    assert config.rootfs == rootfs and config.is_image
    assert config.image_env == ("A=1", "B=x=y")
    # Without WORKDIR an image starts in /, whatever the runner's directory.
    assert config.workdir == Path("/")
    env[ENV_ALGORITHM_ENV] = encode_b64j(["no-equals-sign"])
    with pytest.raises(ValueError, match="K=V"):
        RunnerConfig.from_env(env)


def test_an_image_in_its_own_container_runs_as_its_user_without_the_images_setpriv(runner_job):
    """The runner as an image's entry point (no GANTRY_ROOTFS): the container's / is the
    image; USER is looked up in its /etc/passwd and the uid drop needs none of its tools."""
    command = ["/bin/sh", "-c", 'echo "[$(id -u), \\"$GREETING\\", \\"$HOME\\"]" > /output/id.json']
    result, lines = runner_job.run(
        command,
        image_env=("GREETING=hi",),
        algorithm_user="nobody",
        workdir=Path("/"),
    )
    assert result.return_code == 0, (result.user_safe_error_message, lines)
    assert json.loads(runner_job.read_output("id.json")) == [65534, "hi", "/tmp"]


def test_an_image_root_its_user_cannot_reach_fails_with_a_reason(runner_job, rootfs, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the runner drops to the image's user only as root")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    hidden = private / "rootfs"
    hidden.symlink_to(rootfs)
    result, lines = run_image(runner_job, hidden, ["report"])
    assert result.return_code == 125
    assert result.user_safe_error_message == (
        "The image could not be started: its files are not reachable by its USER"
    )
    assert any("cannot be entered by uid 1000" in line["log"] for line in lines)
