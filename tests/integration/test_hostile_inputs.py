"""Hostile input refused with a message, never an unhandled error: deeply nested JSON."""

from __future__ import annotations

from typing import Any

import pytest

DEEP = "[" * 100_000 + "]" * 100_000  # RecursionError in Python's parser
NESTED = "[" * 900 + "]" * 900  # parses, but pydantic cannot store it


def _deep(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize("body", [DEEP, '{"title": ' * 5000 + "1" + "}" * 5000])
@pytest.mark.parametrize(
    "path", ["algorithms/jobs/", "components/interfaces/", "algorithms/", "uploads/"]
)
def test_a_deeply_nested_request_body_is_a_400(api, path, body) -> None:
    status, answer, _ = api.post(path, raw_body=body)
    assert status == 400, answer
    assert "nested" in answer["detail"]


def test_a_nested_value_too_deep_to_store_is_a_400(api) -> None:
    status, answer, _ = api.post(
        "components/interfaces/",
        {
            "title": "Blob",
            "kind": "Anything",
            "relative_path": "blob.json",
            "default_value": _deep(900),
        },
    )
    assert status == 400, answer
    assert "nested" in answer["detail"]
    # What clients send in practice still passes.
    status, answer, _ = api.post(
        "components/interfaces/",
        {
            "title": "Blob",
            "kind": "Anything",
            "relative_path": "blob.json",
            "default_value": _deep(20),
        },
    )
    assert status == 201, answer


def _validated(ctx: Any, socket: tuple[str, str, str], name: str, body: bytes) -> Any:
    """The job of an upload ``name`` holding ``body`` as the input of ``socket`` (title, kind,
    relative path), once its inputs are validated."""
    from gantry.pipeline.inputs import validate_pending_inputs
    from gantry.services.jobs import JobInput
    from tests.integration.test_inputs_support import (
        RecordingCompute,
        make_algorithm,
        make_socket,
        new_job,
        put_upload,
    )

    ctx.compute_backend = RecordingCompute()
    slug = make_socket(ctx, *socket).slug
    make_socket(ctx, "Result", "JSON", "results.json")
    algorithm = make_algorithm(ctx, "Reader", [slug], ["result"])
    upload = put_upload(ctx, name, body)
    value = (
        JobInput(interface=slug, user_uploads=[upload.pk])
        if socket[1] == "IMG"
        else JobInput(interface=slug, user_upload=upload.pk)
    )
    job = new_job(ctx, algorithm, [value])
    validate_pending_inputs(ctx, job.pk)
    return ctx.store.jobs.get(job.pk)


BLOB = ("Blob", "JSON", "blob.json")
CT_IMAGE = ("CT Image", "IMG", "images/ct")


@pytest.mark.parametrize("body", [DEEP, NESTED])
def test_a_deeply_nested_json_file_fails_the_job(ctx, body) -> None:
    from gantry.job_states import JobStatus

    done = _validated(ctx, BLOB, "blob.json", body.encode())

    assert done.status is JobStatus.FAILURE
    assert done.error_message.startswith("Input 'blob': the file 'blob.json' is not valid JSON")
    assert "nested more than" in done.error_message


@pytest.mark.parametrize("body", [DEEP, NESTED])
def test_an_output_nested_too_deeply_fails_the_job(body) -> None:
    from moto import mock_aws

    from gantry.context import Context
    from gantry.provision import ensure_data
    from tests.integration.pipeline_support import (
        World,
        build_world,
        pipeline_settings,
        run_attempt,
    )

    with mock_aws():
        settings = pipeline_settings("batch")
        ctx = Context.create(settings)
        ensure_data(ctx.clients, settings)
        world: World = build_world(ctx, "batch")
        job = world.job()
        run_attempt(world.ctx, job, outputs={"score.json": body.encode()})
        assert world.deliver("succeeded", job) == "Failed"
        failed = world.get(job)
        assert failed.error_message.startswith("The output file 'score.json' is not valid json")
        assert "nested more than" in failed.error_message


def test_a_drop_manifest_nested_too_deeply_is_refused() -> None:
    from gantry.pipeline.dropbox import DropError, _parse_manifest

    with pytest.raises(DropError, match="nested more than"):
        _parse_manifest(DEEP.encode())


LONG_NAME = "\u00e9" * 200 + ".csv"  # 200 characters, 404 bytes: more than a file name may be


@pytest.mark.parametrize("name", [LONG_NAME, "\U0001f600" * 255])
def test_an_upload_name_longer_than_a_file_system_allows_is_a_400(api, name) -> None:
    status, answer, _ = api.post("uploads/", {"filename": name})
    assert status == 400, answer
    assert "filename" in answer and "255 bytes" in answer["detail"]
    status, answer, _ = api.post("uploads/", {"filename": "\u00e9" * 125 + ".csv"})
    assert status == 201, answer


def test_an_image_upload_with_an_overlong_name_fails_the_job(ctx) -> None:
    from gantry.job_states import JobStatus

    # Made before the API refused such names; an image that is not .mha or .tif is downloaded.
    done = _validated(ctx, CT_IMAGE, "\u00e9" * 200 + ".nii", b"not read")

    assert done.status is JobStatus.FAILURE
    assert "longer than 255 bytes" in done.error_message


@pytest.fixture
def blob_algorithm(api) -> dict:
    """alice's algorithm of eight inline JSON inputs, with a ready image."""
    slugs = [f"blob-{n}" for n in range(8)]
    for slug in slugs:
        body = {"title": slug, "kind": "Anything", "relative_path": f"{slug}.json"}
        status, created, _ = api.post("components/interfaces/", body)
        assert status == 201, created
    body = {"title": "Result", "kind": "Float", "relative_path": "result.json"}
    assert api.post("components/interfaces/", body)[0] == 201
    interfaces = [
        {"inputs": slugs, "outputs": ["result"]},
        {"inputs": ["blob-0"], "outputs": ["result"]},
    ]
    status, algorithm, _ = api.post("algorithms/", {"title": "Blobs", "interfaces": interfaces})
    assert status == 201, algorithm
    image = {"image": "local", "command": ["run"], "algorithm": algorithm["pk"]}
    assert api.post("algorithms/images/", image)[0] == 201
    return algorithm


def _value(slug: str, value: object) -> dict:
    return {"interface": slug, "value": value}


def test_an_inline_value_too_large_for_the_record_is_a_400(api, blob_algorithm) -> None:
    job = {"algorithm": blob_algorithm["api_url"], "inputs": [_value("blob-0", "x" * 900_000)]}
    status, answer, _ = api.post("algorithms/jobs/", job)
    assert status == 400, answer
    assert "blob-0" in answer["detail"] and "64 KiB" in answer["detail"]


def test_inline_values_too_large_together_are_a_400(api, blob_algorithm) -> None:
    inputs = [_value(f"blob-{n}", "x" * 60_000) for n in range(8)]  # 480 KB: over an item
    job = {"algorithm": blob_algorithm["api_url"], "inputs": inputs}
    status, answer, _ = api.post("algorithms/jobs/", job)
    assert status == 400, answer
    assert "inputs" in answer and "256 KiB" in answer["detail"]
    # Within the limits the job is made.
    inputs = [_value(f"blob-{n}", "x" * 30_000) for n in range(8)]
    status, answer, _ = api.post("algorithms/jobs/", {**job, "inputs": inputs})
    assert status == 201, answer


def _mha(dims: str, data: bytes, *, compressed: bool = False) -> bytes:
    header = (
        f"ObjectType = Image\nNDims = {len(dims.split())}\nDimSize = {dims}\n"
        f"ElementType = MET_UCHAR\nCompressedData = {compressed}\nElementDataFile = LOCAL\n"
    )
    return header.encode() + data


def _image_input_fails(ctx: Any, name: str, body: bytes) -> Any:
    """The job of an upload ``name`` holding ``body`` as its image input, after validation,
    failed with the message of an unreadable file."""
    from gantry.job_states import JobStatus

    done = _validated(ctx, CT_IMAGE, name, body)
    assert done.status is JobStatus.FAILURE, done.inputs
    assert done.error_message.startswith(f"Input 'ct-image': the file '{name}' is not a readable")
    return done


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # A petabyte of voxels declared by a file of a few bytes: a memory bomb for whoever
        # reads the image (the algorithm, a viewer).
        (_mha("100000 100000 100000", b"\0" * 10), "holds 10 of the 1000000000000000 bytes"),
        # A negative size wraps round to four billion.
        (_mha("-4 4", b"\0" * 16), "holds 16 of the 17179869168 bytes"),
        (_mha("4 4", b"\0" * 15), "holds 15 of the 16 bytes"),
        (
            _mha("100000 100000 100000", b"x\x9c\x03\x00\x00\x00\x00\x01", compressed=True),
            "cannot hold",
        ),
    ],
)
def test_an_mha_without_the_voxels_its_header_declares_fails_the_job(ctx, body, message):
    done = _image_input_fails(ctx, "scan.mha", body)
    assert message in done.error_message
    assert ctx.compute.submitted == []


def test_an_mha_read_from_disk_is_checked_alike(tmp_path) -> None:
    """Upload sessions and archive items download the file and prepare it on disk."""
    from gantry import imaging

    path = tmp_path / "scan.mha"
    path.write_bytes(_mha("100000 100000 100000", b"\0" * 10))
    with pytest.raises(imaging.ImageError, match="holds 10 of the 1000000000000000 bytes"):
        imaging.prepare_image([path], tmp_path / "out")
    path.write_bytes(_mha("4 4", b"\0" * 16))
    assert imaging.prepare_image([path], tmp_path / "out").info.shape == [4, 4]


def _tiff(width: int, height: int, offsets: tuple[int, int], counts: tuple[int, int]) -> bytes:
    """A little-endian TIFF of one 8-bit page, its tags as given (StripOffsets and
    StripByteCounts as (count, value)), 300 bytes of pixels after them."""
    import struct

    tags = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, *offsets),
        (277, 3, 1, 1),
        (278, 4, 1, height),
        (279, 4, *counts),
    ]
    ifd = struct.pack("<H", len(tags))
    for tag in tags:
        ifd += struct.pack("<HHII", *tag)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + b"\0" * 300


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_tiff(100_000, 100_000, (1, 200), (1, 4_000_000_000)), "beyond the end of the file"),
        (_tiff(100_000, 100_000, (0x1000_0000, 200), (0x1000_0000, 200)), "no pixel data"),
        (_tiff(100, 100, (1, 200), (1, 100)), "holds 100 of the 10000 bytes"),
    ],
)
def test_a_tiff_without_the_pixels_its_tags_declare_fails_the_job(ctx, body, message) -> None:
    done = _image_input_fails(ctx, "slide.tif", body)
    assert message in done.error_message


@pytest.mark.parametrize(
    ("name", "body", "message"),
    [
        ("bomb.mha", _mha("100000 100000 100000", b"\0" * 10), "holds 10 of the"),
        ("bomb.tif", _tiff(100_000, 100_000, (1, 200), (1, 4_000_000_000)), "beyond the end"),
        ("fine.mha", _mha("4 4", b"\0" * 16), None),
    ],
)
def test_an_output_image_without_its_voxels_is_refused(ctx, name, body, message) -> None:
    """An algorithm's output image is checked as an input is: a hostile algorithm cannot
    leave the creator an image of a petabyte."""
    from gantry.jobs import Job
    from gantry.pipeline.outputs import OutputError, ParsedOutputs, _image_output
    from tests.integration.test_inputs_support import make_socket

    socket = make_socket(ctx, "Mask Out", "IMG", "images/mask-out")
    prefix = "io/job/1/output/"
    key = f"{prefix}images/mask-out/{name}"
    ctx.clients.s3.put_object(Bucket=ctx.settings.bucket_name, Key=key, Body=body)
    # Only the fields _image_output reads.
    job = Job.model_construct(pk="job", attempt=1, creator="alice")  # type: ignore[call-arg]
    if message is None:
        assert _image_output(ctx, job, socket, prefix, ParsedOutputs())["image"]
        return
    with pytest.raises(OutputError, match=message):
        _image_output(ctx, job, socket, prefix, ParsedOutputs())


@pytest.mark.parametrize("name", ["big.nrrd", "big.nii.gz", "big.mha"])
def test_an_output_image_too_large_to_download_fails_the_job_unread(ctx, monkeypatch, name) -> None:
    """Formats whose header cannot be read in place are downloaded to the function's disk
    (4 GiB on AWS, 120 s): a larger output failed the function on every try, and the job
    stayed Parsing while the sweeper tried again, for ever."""
    from gantry.jobs import Job
    from gantry.pipeline import outputs
    from tests.integration.test_inputs_support import make_socket

    monkeypatch.setattr(outputs, "MAX_DOWNLOADED_IMAGE_BYTES", 1024 * 1024)
    socket = make_socket(ctx, "Mask Out", "IMG", "images/mask-out")
    prefix = "io/job/1/output/"
    key = f"{prefix}images/mask-out/{name}"
    # A .mha without its header's data line within the first 64 KiB is downloaded too.
    ctx.clients.s3.put_object(Bucket=ctx.settings.bucket_name, Key=key, Body=b"\0" * 2**21)
    reads: list[str] = []

    def read(params: dict[str, Any], **_kwargs: Any) -> None:
        reads.append(params.get("Range", "whole"))

    ctx.clients.s3.meta.events.register("provide-client-params.s3.GetObject", read)
    job = Job.model_construct(pk="job", attempt=1, creator="alice")  # type: ignore[call-arg]

    with pytest.raises(outputs.OutputError) as raised:
        outputs._image_output(ctx, job, socket, prefix, outputs.ParsedOutputs())

    assert str(raised.value) == (
        f"The output image 'images/mask-out/{name}' is too large to be read (2097152 bytes; "
        "at most 1048576 for this format): write it as .mha or .tif, whose headers are "
        "read where they lie"
    )
    # At most a .mha's first bytes, where its header is looked for.
    assert all(r == "bytes=0-65535" for r in reads)
