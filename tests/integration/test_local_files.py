"""On one machine the runner copies inputs and outputs from and to the endpoint's files.

The runner stages inputs against the embedded endpoint as the local compute backend starts it
(``GANTRY_RUNNER_LOCAL_FILES=1``): an input the durable endpoint keeps as a file is copied from
that file, not downloaded; whatever the job then does to its copy, the stored object keeps its
bytes. An endpoint without files (the in-memory one, like any other S3) gets the usual
download, as on AWS. Outputs go the other way (``GANTRY_RUNNER_LOCAL_INCOMING``): copied into
the endpoint's incoming folder and moved into its store by a PutObject naming the copy, stored
as durably as an upload; the endpoint takes no other file. Once a sandboxed job has exited
(none of its processes is left), an output with no other name is moved there instead of
copied; a hard-linked one, one on another file system, or one of a live algorithm is copied,
and a symbolic link is refused as always.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from batch_runner import local_files, sandbox
from batch_runner.config import Limits, RunnerConfig
from batch_runner.invoke import run_invocation
from batch_runner.logs import JsonLog
from batch_runner.staging import StagingError, stage_inputs, upload_outputs
from gantry.contract import (
    LOCAL_FILE_HEADER,
    LOCAL_FILES_ENV,
    LOCAL_INCOMING_ENV,
    InferenceResult,
    Invocation,
    InvocationInput,
    new_signing_key,
)
from gantry.local.endpoint import EmbeddedAws

pytestmark = pytest.mark.slow


def _client(url: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )


def _body() -> bytes:
    # Larger than one transfer part (8 MiB), so a download would be ranged and concurrent.
    return hashlib.sha256(b"ct").digest() * (9 * 1024 * 1024 // 32)


@pytest.fixture
def runner_on_one_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOCAL_FILES_ENV, "1")


def _endpoint(data_dir: Path | None) -> Generator[tuple[Any, str], None, None]:
    endpoint = EmbeddedAws(data_dir=data_dir).start()
    if endpoint.store is not None:
        os.environ[LOCAL_INCOMING_ENV] = str(endpoint.store.incoming)
    try:
        client = _client(endpoint.url)
        bucket = f"gantry-inputs-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=bucket)
        yield client, bucket
    finally:
        os.environ.pop(LOCAL_INCOMING_ENV, None)
        endpoint.stop()


@pytest.fixture
def durable(tmp_path: Path) -> Iterator[tuple[Any, str]]:
    yield from _endpoint(tmp_path / "data")


@pytest.fixture
def in_memory() -> Iterator[tuple[Any, str]]:
    yield from _endpoint(None)


def _inputs(bucket: str) -> list[InvocationInput]:
    return [
        InvocationInput(relative_path="images/ct/ct.mha", bucket_name=bucket, bucket_key="in/ct"),
        InvocationInput(relative_path="notes.txt", bucket_name=bucket, bucket_key="in/notes"),
    ]


def _downloads(client: Any) -> list[str]:
    """Byte ranges of the GetObject requests the client sends from now on."""
    ranges: list[str] = []

    def seen(params: dict[str, Any], **_kwargs: Any) -> None:
        ranges.append(params.get("Range", "whole"))

    client.meta.events.register("provide-client-params.s3.GetObject", seen)
    return ranges


@pytest.mark.usefixtures("runner_on_one_machine")
def test_inputs_are_copied_from_the_stored_files(durable: tuple[Any, str], tmp_path: Path) -> None:
    client, bucket = durable
    body = _body()
    client.put_object(Bucket=bucket, Key="in/ct", Body=body)
    client.put_object(Bucket=bucket, Key="in/notes", Body=b"")  # nothing to copy from
    requests = _downloads(client)

    staged = stage_inputs(client, _inputs(bucket), tmp_path / "input", Limits())

    image = tmp_path / "input" / "images" / "ct" / "ct.mha"
    assert image.read_bytes() == body
    assert (tmp_path / "input" / "notes.txt").read_bytes() == b""
    assert [entry["size"] for entry in staged] == [len(body), 0]
    # The image: its start asked for, the rest copied from the file, not downloaded in parts.
    assert requests.count(local_files.ASK_RANGE) == 2
    assert len([r for r in requests if r != local_files.ASK_RANGE]) <= 1  # the empty file downloads
    # The job's copy is its own: changed in place or replaced, the stored object is not.
    assert os.stat(image).st_nlink == 1
    with open(image, "r+b") as handle:
        handle.write(b"altered")
    assert client.get_object(Bucket=bucket, Key="in/ct")["Body"].read() == body


@pytest.mark.usefixtures("runner_on_one_machine")
def test_an_uploaded_input_is_copied_from_its_part_files(
    durable: tuple[Any, str], tmp_path: Path
) -> None:
    client, bucket = durable
    parts = [hashlib.sha256(str(n).encode()).digest() * (5 * 1024 * 1024 // 32) for n in (1, 2)]
    parts.append(b"the last part")
    upload = client.create_multipart_upload(Bucket=bucket, Key="in/ct")["UploadId"]
    etags = [
        client.upload_part(Bucket=bucket, Key="in/ct", UploadId=upload, PartNumber=n, Body=body)
        for n, body in enumerate(parts, 1)
    ]
    client.complete_multipart_upload(
        Bucket=bucket,
        Key="in/ct",
        UploadId=upload,
        MultipartUpload={
            "Parts": [{"PartNumber": n, "ETag": e["ETag"]} for n, e in enumerate(etags, 1)]
        },
    )
    requests = _downloads(client)

    # The endpoint names the three files the object is kept in; the runner joins them.
    assert local_files.copy_local(client, bucket, "in/ct", str(tmp_path / "ct"))
    assert (tmp_path / "ct").read_bytes() == b"".join(parts)
    assert requests == [local_files.ASK_RANGE]


@pytest.mark.usefixtures("runner_on_one_machine")
def test_a_copy_onto_a_longer_file_leaves_exactly_the_object(
    durable: tuple[Any, str], tmp_path: Path
) -> None:
    client, bucket = durable
    body = _body()
    client.put_object(Bucket=bucket, Key="in/ct", Body=body)
    target = tmp_path / "ct"
    target.write_bytes(b"older and longer" * (len(body) // 8))

    assert local_files.copy_local(client, bucket, "in/ct", str(target))
    assert target.read_bytes() == body


@pytest.mark.usefixtures("runner_on_one_machine")
def test_an_endpoint_without_files_gets_the_download(
    in_memory: tuple[Any, str], tmp_path: Path
) -> None:
    client, bucket = in_memory
    body = _body()
    client.put_object(Bucket=bucket, Key="in/ct", Body=body)
    client.put_object(Bucket=bucket, Key="in/notes", Body=b"notes")

    assert not local_files.copy_local(client, bucket, "in/ct", str(tmp_path / "ct"))
    assert not (tmp_path / "ct").exists()
    stage_inputs(client, _inputs(bucket), tmp_path / "input", Limits())

    assert (tmp_path / "input" / "images" / "ct" / "ct.mha").read_bytes() == body
    assert (tmp_path / "input" / "notes.txt").read_bytes() == b"notes"


@pytest.mark.usefixtures("runner_on_one_machine")
@pytest.mark.parametrize("endpoint", ["durable", "in_memory"])
def test_a_small_input_comes_whole_with_the_first_request(
    endpoint: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    client, bucket = request.getfixturevalue(endpoint)
    body = b"x" * (local_files.WHOLE_UP_TO - 1) + b"!"
    client.put_object(Bucket=bucket, Key="in/notes", Body=body)
    requests = _downloads(client)
    heads: list[str] = []
    client.meta.events.register(
        "provide-client-params.s3.HeadObject", lambda params, **_: heads.append(params["Key"])
    )

    inputs = [InvocationInput(relative_path="notes.txt", bucket_name=bucket, bucket_key="in/notes")]
    staged = stage_inputs(client, inputs, tmp_path / "input", Limits())

    assert (tmp_path / "input" / "notes.txt").read_bytes() == body
    assert staged[0]["size"] == len(body)
    # With or without the endpoint's files: one request, no HEAD, no download in parts.
    assert requests == [local_files.ASK_RANGE]
    assert heads == []


def test_without_the_local_backend_the_runner_downloads(
    durable: tuple[Any, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(LOCAL_FILES_ENV, raising=False)
    client, bucket = durable
    body = _body()
    client.put_object(Bucket=bucket, Key="in/ct", Body=body)
    client.put_object(Bucket=bucket, Key="in/notes", Body=b"notes")
    requests = _downloads(client)

    stage_inputs(client, _inputs(bucket), tmp_path / "input", Limits())

    assert (tmp_path / "input" / "images" / "ct" / "ct.mha").read_bytes() == body
    assert local_files.ASK_RANGE not in requests  # as on AWS: plain downloads only


def test_a_missing_input_is_still_a_staging_error(
    durable: tuple[Any, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LOCAL_FILES_ENV, "1")
    client, bucket = durable
    with pytest.raises(StagingError, match="could not be downloaded"):
        stage_inputs(client, _inputs(bucket), tmp_path / "input", Limits())


def _puts(client: Any) -> list[int]:
    """Body sizes of the PutObject and UploadPart requests the client sends from now on."""
    sizes: list[int] = []

    def seen(params: dict[str, Any], **_kwargs: Any) -> None:
        body = params.get("Body", b"")
        sizes.append(len(body) if isinstance(body, bytes) else -1)

    client.meta.events.register("provide-client-params.s3.PutObject", seen)
    client.meta.events.register("provide-client-params.s3.UploadPart", seen)
    return sizes


def test_outputs_of_an_algorithm_that_may_live_on_are_handed_over_as_copies(
    tmp_path: Path,
) -> None:
    # As for an invoke-mode server or an unsandboxed command: the job keeps its files.
    data_dir = tmp_path / "data"
    output = tmp_path / "output"
    (output / "images" / "seg").mkdir(parents=True)
    body = _body()
    (output / "images" / "seg" / "seg.mha").write_bytes(body)
    (output / "result.json").write_text('{"score": 1}')
    files = [
        ("images/seg/seg.mha", output / "images" / "seg" / "seg.mha"),
        ("result.json", output / "result.json"),
    ]
    endpoint = _endpoint(data_dir)
    client, bucket = next(endpoint)
    puts = _puts(client)

    stored = upload_outputs(client, files, bucket, "io/job/1/output/")

    assert [o.size for o in stored] == [len(body), 12]
    assert puts == [0, 0]  # no byte sent over HTTP
    key = "io/job/1/output/images/seg/seg.mha"
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    assert list((data_dir / "incoming").iterdir()) == []
    # The job's file and the stored object share nothing: a change to one is not the other's.
    with open(files[0][1], "r+b") as handle:
        handle.write(b"altered")
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    assert all(f.stat().st_nlink == 1 for f in (data_dir / "objects").iterdir())
    endpoint.close()

    # Stored as any acknowledged write is: there after a restart.
    again = EmbeddedAws(data_dir=data_dir).start()
    try:
        client = _client(again.url)
        client.create_bucket(Bucket=bucket)
        again.restore()
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == body
        result = client.get_object(Bucket=bucket, Key="io/job/1/output/result.json")
        assert result["Body"].read() == b'{"score": 1}'
    finally:
        again.stop()


def test_the_endpoint_takes_no_file_but_a_single_named_one_of_its_incoming_folder(
    durable: tuple[Any, str], tmp_path: Path
) -> None:
    client, bucket = durable
    incoming = Path(os.environ[LOCAL_INCOMING_ENV])
    secret = tmp_path / "secret"
    secret.write_bytes(b"not for the store")
    linked = incoming / "linked"
    os.link(secret, linked)
    for named in (str(secret), str(incoming / ".." / "secret"), str(linked), "relative"):

        def header(request: Any, named: str = named, **_kwargs: Any) -> None:
            request.headers[LOCAL_FILE_HEADER] = named

        client.meta.events.register("before-sign.s3.PutObject", header)
        with pytest.raises(client.exceptions.ClientError, match="InvalidRequest"):
            client.put_object(Bucket=bucket, Key="values/x", Body=b"")
        client.meta.events.unregister("before-sign.s3.PutObject", header)
    assert "Contents" not in client.list_objects_v2(Bucket=bucket)
    assert secret.read_bytes() == b"not for the store"


def test_an_endpoint_without_an_incoming_folder_gets_the_upload(
    in_memory: tuple[Any, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Misconfigured: the folder is not the endpoint's. It stores an empty object, which the
    # upload then replaces.
    monkeypatch.setenv(LOCAL_INCOMING_ENV, str(tmp_path))
    client, bucket = in_memory
    body = _body()
    (tmp_path / "out.bin").write_bytes(body)

    upload_outputs(client, [("out.bin", tmp_path / "out.bin")], bucket, "out/")

    assert client.get_object(Bucket=bucket, Key="out/out.bin")["Body"].read() == body
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


_needs_sandbox = pytest.mark.skipif(
    not sandbox.probe().available, reason=f"no sandbox here: {sandbox.probe().reason}"
)


@pytest.fixture
def job_root() -> Iterator[Path]:
    # World-traversable, as the runner's roots are (pytest's are private to root).
    root = Path(tempfile.mkdtemp(prefix="gantry-local-files-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run_job(
    client: Any,
    bucket: str,
    root: Path,
    code: str,
    sandbox_mode: str = "required",
    python: str = sys.executable,
    **task: Any,
) -> InferenceResult:
    invocation = Invocation(
        pk="job", inputs=[], output_bucket_name=bucket, output_prefix="out/", timeout=60, **task
    )
    config = RunnerConfig(
        input_root=root / "input",
        output_root=root / "output",
        signing_key_hex=new_signing_key(),
        command=[python, "-c", textwrap.dedent(code)],
        sandbox=sandbox_mode,  # type: ignore[arg-type]
        workdir=root,
        limits=Limits(kill_grace_seconds=1.0),
    )
    return run_invocation(invocation, config, client=client, log=JsonLog(stream=io.StringIO()))


def _stored_inodes(data_dir: Path) -> dict[int, os.stat_result]:
    return {info.st_ino: info for info in (p.stat() for p in (data_dir / "objects").iterdir())}


# The algorithm writes an image-sized output, two JSON outputs the early checks read (one
# valid, one not), and a file with a second name; it prints the outputs' inode numbers (a bind
# mount shows the host's).
_OUTPUTS = """
import json, os
os.makedirs("/output/images/seg")
with open("/output/images/seg/seg.bin", "wb") as handle:
    handle.write(bytes(range(256)) * 40000)
with open("/output/result.json", "w") as handle:
    json.dump({"score": 1}, handle)
with open("/output/bad.json", "w") as handle:
    json.dump({"other": 1}, handle)
with open("/output/a.bin", "wb") as handle:
    handle.write(b"two names")
os.link("/output/a.bin", "/output/b.bin")
names = ("images/seg/seg.bin", "result.json", "a.bin")
print(json.dumps({name: os.stat("/output/" + name).st_ino for name in names}))
"""
_SCHEMA = {"type": "object", "required": ["score"]}


@_needs_sandbox
def test_outputs_of_a_finished_sandboxed_job_are_moved_not_copied(
    tmp_path: Path, job_root: Path
) -> None:
    data_dir = tmp_path / "data"
    endpoint = _endpoint(data_dir)
    client, bucket = next(endpoint)
    checked = [
        {"slug": slug, "kind": "anything", "relative_path": f"{slug}.json", "schemas": [_SCHEMA]}
        for slug in ("result", "bad")
    ]

    result = _run_job(client, bucket, job_root, _OUTPUTS, outputs=checked)

    assert result.return_code == 0, result.user_process_last_stderr_lines
    inodes = json.loads(result.user_process_last_stdout_lines[-1])
    output = job_root / "output"
    # The early checks read the files before they were moved: they found both, and the bad
    # one's content is what they judged.
    assert list(result.output_errors) == ["bad"]
    assert result.output_errors["bad"].startswith("The output file 'bad.json' is not valid")
    # Moved: the job's names are gone, the store holds the very inodes the algorithm wrote,
    # as this user's files only it may read, with one name each.
    stored = _stored_inodes(data_dir)
    for name in ("images/seg/seg.bin", "result.json", "bad.json"):
        assert not (output / name).exists()
    for name in ("images/seg/seg.bin", "result.json"):
        info = stored[inodes[name]]
        assert (info.st_uid, stat.S_IMODE(info.st_mode), info.st_nlink) == (os.getuid(), 0o600, 1)
    # A file with another name is copied, never moved: both names keep it, the store has
    # its own inode.
    assert inodes["a.bin"] not in stored
    assert os.stat(output / "a.bin").st_ino == os.stat(output / "b.bin").st_ino == inodes["a.bin"]
    assert (output / "a.bin").read_bytes() == b"two names"
    assert list((data_dir / "incoming").iterdir()) == []
    image = bytes(range(256)) * 40000
    sizes = {o.relative_path: o.size for o in result.outputs}
    assert sizes == {
        "a.bin": 9,
        "b.bin": 9,
        "bad.json": 12,
        "images/seg/seg.bin": len(image),
        "result.json": 12,
    }
    endpoint.close()

    # Stored as any acknowledged write is: there after a restart of the endpoint.
    again = EmbeddedAws(data_dir=data_dir).start()
    try:
        client = _client(again.url)
        client.create_bucket(Bucket=bucket)
        again.restore()
        read = {
            name: client.get_object(Bucket=bucket, Key=f"out/{name}")["Body"].read()
            for name in sizes
        }
        assert read["images/seg/seg.bin"] == image
        assert read["result.json"] == read["bad.json"].replace(b"other", b"score")
        assert read["a.bin"] == read["b.bin"] == b"two names"
    finally:
        again.stop()


@_needs_sandbox
def test_a_symbolic_link_output_is_refused_and_nothing_is_moved(
    durable: tuple[Any, str], job_root: Path, tmp_path: Path
) -> None:
    client, bucket = durable
    code = """
    import os
    with open("/output/real.bin", "wb") as handle:
        handle.write(b"real")
    os.symlink("/output/real.bin", "/output/link.bin")
    """

    result = _run_job(client, bucket, job_root, code)

    assert result.user_safe_error_message == (
        "Output 'link.bin' is a symbolic link, which is not allowed"
    )
    assert "Contents" not in client.list_objects_v2(Bucket=bucket, Prefix="out/real")
    assert (job_root / "output" / "real.bin").read_bytes() == b"real"
    assert os.readlink(job_root / "output" / "link.bin") == "/output/real.bin"


def test_outputs_of_an_unsandboxed_job_are_copied(durable: tuple[Any, str], job_root: Path) -> None:
    # Its processes may outlive it (a new session leaves its process group): it keeps its files.
    client, bucket = durable
    code = """
    import os
    with open(os.path.join(os.environ["OUTPUT_DIR"], "o.bin"), "wb") as handle:
        handle.write(b"kept")
    """

    # The system's python: the unprivileged algorithm user may not reach the checkout's.
    result = _run_job(client, bucket, job_root, code, sandbox_mode="off", python="/usr/bin/python3")

    assert result.return_code == 0, result.user_process_last_stderr_lines
    assert (job_root / "output" / "o.bin").read_bytes() == b"kept"
    assert client.get_object(Bucket=bucket, Key="out/o.bin")["Body"].read() == b"kept"


def test_an_output_on_another_file_system_is_copied(
    durable: tuple[Any, str], tmp_path: Path
) -> None:
    client, bucket = durable
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system here")
    folder = Path(tempfile.mkdtemp(dir=shm))
    try:
        (folder / "out.bin").write_bytes(b"elsewhere")
        puts = _puts(client)

        upload_outputs(
            client, [("out.bin", folder / "out.bin")], bucket, "out/", algorithm_gone=True
        )

        assert puts == [0]  # still handed over as a file, not sent
        assert (folder / "out.bin").read_bytes() == b"elsewhere"
        assert client.get_object(Bucket=bucket, Key="out/out.bin")["Body"].read() == b"elsewhere"
    finally:
        shutil.rmtree(folder)


def test_an_output_grown_after_it_was_opened_is_copied_as_it_was_measured(
    durable: tuple[Any, str], tmp_path: Path
) -> None:
    # A live process of the algorithm (an invoke-mode server) may grow a file once the
    # limits were checked: a sparse terabyte copied would be written out in full.
    client, bucket = durable
    (tmp_path / "out.bin").write_bytes(b"x")

    def grow(_files: object) -> None:
        os.truncate(tmp_path / "out.bin", 32 * 1024 * 1024)

    stored = upload_outputs(client, [("out.bin", tmp_path / "out.bin")], bucket, "out/", check=grow)

    assert [o.size for o in stored] == [1]
    assert client.get_object(Bucket=bucket, Key="out/out.bin")["Body"].read() == b"x"
