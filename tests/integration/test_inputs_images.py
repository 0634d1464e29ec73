"""Image inputs: uploads are checked, converted to .mha where needed, stored and registered."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile

from gantry.images import ImageType
from gantry.job_states import JobStatus
from gantry.jobs import Job
from gantry.pipeline.inputs import image_pk_for, validate_pending_inputs
from gantry.services.jobs import JobInput
from tests.images_support import write_dicom_series
from tests.integration.test_inputs_support import (
    ALICE,
    RecordingCompute,
    make_algorithm,
    make_socket,
    new_job,
    put_upload,
    read_key,
)


@pytest.fixture
def setup(ctx):
    ctx.compute_backend = RecordingCompute()
    make_socket(ctx, "CT Image", "IMG", "images/ct")
    make_socket(
        ctx, "Mask", "SEG", "images/mask", overlay_segments=[{"name": "organ", "voxel_value": 1}]
    )
    make_socket(ctx, "Result", "JSON", "results.json")
    algorithm = make_algorithm(
        ctx, "Segmenter", ["ct-image"], ["result"], more_sets=[(["mask"], ["result"])]
    )
    return ctx, algorithm


def volume() -> sitk.Image:
    image = sitk.GetImageFromArray(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6))
    image.SetSpacing((0.5, 0.75, 2.0))
    return image


@pytest.mark.parametrize(
    ("filename", "stored", "image_type"),
    [
        ("scan.mha", "scan.mha", ImageType.MHD),
        ("scan.nii.gz", "scan.mha", ImageType.MHD),
        ("scan.nrrd", "scan.mha", ImageType.MHD),
    ],
)
def test_volume_is_imported(setup, tmp_path: Path, filename, stored, image_type) -> None:
    ctx, algorithm = setup
    sitk.WriteImage(volume(), str(tmp_path / filename))
    upload = put_upload(ctx, filename, tmp_path / filename)
    job = new_job(ctx, algorithm, [JobInput(interface="ct-image", user_uploads=[upload.pk])])
    assert job.status is JobStatus.VALIDATING_INPUTS

    validate_pending_inputs(ctx, job.pk)

    done = ctx.store.jobs.get(job.pk)
    assert done.status is JobStatus.PROVISIONED, done.error_message
    assert ctx.compute.submitted == [job.pk]
    value = done.inputs[0]
    assert value.pending_uploads is None and value.image == image_pk_for(job.pk, "ct-image")
    image = ctx.store.images.get(value.image)
    assert image.owner == ALICE and image.name == filename
    assert image.shape == [4, 5, 6] and (image.width, image.height, image.depth) == (6, 5, 4)
    assert image.voxel_width_mm == pytest.approx(0.5)
    assert image.voxel_depth_mm == pytest.approx(2.0)
    [file] = image.files
    assert file.key == f"values/images/{image.pk}/{stored}" and file.image_type is image_type
    local = tmp_path / "back" / stored
    local.parent.mkdir()
    local.write_bytes(read_key(ctx, file.key))
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(local)))
    assert np.array_equal(array, sitk.GetArrayFromImage(volume()))
    [user_job] = ctx.store.jobs.for_image(ALICE, image.pk, "IN")
    assert user_job.pk == job.pk


def test_mhd_with_raw_is_converted(setup, tmp_path: Path) -> None:
    ctx, algorithm = setup
    sitk.WriteImage(volume(), str(tmp_path / "scan.mhd"))
    uploads = [
        put_upload(ctx, "scan.mhd", tmp_path / "scan.mhd"),
        put_upload(ctx, "scan.raw", tmp_path / "scan.raw"),
    ]
    job = new_job(
        ctx, algorithm, [JobInput(interface="ct-image", user_uploads=[u.pk for u in uploads])]
    )
    validate_pending_inputs(ctx, job.pk)
    done = ctx.store.jobs.get(job.pk)
    assert done.status is JobStatus.PROVISIONED, done.error_message
    assert ctx.store.images.get(done.inputs[0].image).files[0].filename == "scan.mha"


def test_tiff_is_kept_as_tiff(setup, tmp_path: Path) -> None:
    ctx, algorithm = setup
    rgb = np.zeros((20, 30, 3), dtype=np.uint8)
    tifffile.imwrite(
        tmp_path / "slide.tif",
        rgb,
        photometric="rgb",
        resolution=(100, 100),
        resolutionunit="CENTIMETER",
    )
    upload = put_upload(ctx, "slide.tif", tmp_path / "slide.tif")
    job = new_job(ctx, algorithm, [JobInput(interface="ct-image", user_uploads=[upload.pk])])
    validate_pending_inputs(ctx, job.pk)
    done = ctx.store.jobs.get(job.pk)
    assert done.status is JobStatus.PROVISIONED, done.error_message
    image = ctx.store.images.get(done.inputs[0].image)
    assert image.files[0].image_type is ImageType.TIFF
    assert image.files[0].key.endswith("/slide.tif")
    assert image.color_space == "RGB" and image.shape == [20, 30, 3]
    assert image.voxel_width_mm == pytest.approx(0.1)
    assert read_key(ctx, image.files[0].key) == (tmp_path / "slide.tif").read_bytes()


@pytest.mark.parametrize("name", ["photo.png", "photo.jpg", "photo.jpeg"])
def test_png_and_jpeg_are_accepted_and_converted(setup, tmp_path: Path, name: str) -> None:
    ctx, algorithm = setup
    rgb = sitk.GetImageFromArray(np.full((8, 9, 3), 7, dtype=np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / name))
    upload = put_upload(ctx, name, tmp_path / name)
    job = new_job(ctx, algorithm, [JobInput(interface="ct-image", user_uploads=[upload.pk])])
    validate_pending_inputs(ctx, job.pk)
    done = ctx.store.jobs.get(job.pk)
    assert done.status is JobStatus.PROVISIONED, done.error_message
    image = ctx.store.images.get(done.inputs[0].image)
    assert image.files[0].filename == "photo.mha"
    assert image.shape == [8, 9, 3] and image.color_space == "RGB" and image.depth is None


def test_a_dicom_series_uploaded_slice_by_slice_becomes_one_image(setup, tmp_path: Path) -> None:
    ctx, algorithm = setup
    uploads = [put_upload(ctx, p.name, p) for p in write_dicom_series(tmp_path / "series")]
    job = new_job(
        ctx, algorithm, [JobInput(interface="ct-image", user_uploads=[u.pk for u in uploads])]
    )
    validate_pending_inputs(ctx, job.pk)
    done = ctx.store.jobs.get(job.pk)
    assert done.status is JobStatus.PROVISIONED, done.error_message
    image = ctx.store.images.get(done.inputs[0].image)
    assert image.files[0].filename.endswith(".mha")
    assert image.shape == [3, 6, 7] and image.voxel_depth_mm == pytest.approx(2.5)


def test_unreadable_image_fails_the_job(setup) -> None:
    ctx, algorithm = setup
    upload = put_upload(ctx, "broken.mha", b"this is not an image")
    job = new_job(ctx, algorithm, [JobInput(interface="ct-image", user_uploads=[upload.pk])])
    validate_pending_inputs(ctx, job.pk)
    done = ctx.store.jobs.get(job.pk)
    assert done.status is JobStatus.FAILURE
    assert done.error_message.startswith(
        "Input 'ct-image': the file 'broken.mha' is not a readable image: "
    )
    assert "not a readable image" in done.detailed_error_message["ct-image"]
    assert ctx.compute.submitted == []
    assert ctx.store.images.page_for(ALICE, offset=0, limit=10)[1] == 0


def test_mha_pointing_at_host_files_is_refused(setup) -> None:
    ctx, algorithm = setup
    header = (
        b"ObjectType = Image\nNDims = 2\nDimSize = 4 4\nElementType = MET_UCHAR\n"
        b"ElementDataFile = /etc/hostname\n"
    )
    upload = put_upload(ctx, "evil.mha", header)
    job = new_job(ctx, algorithm, [JobInput(interface="ct-image", user_uploads=[upload.pk])])
    validate_pending_inputs(ctx, job.pk)
    done = ctx.store.jobs.get(job.pk)
    assert done.status is JobStatus.FAILURE
    assert "ElementDataFile = LOCAL" in done.error_message


def test_segmentation_values_are_checked(setup, tmp_path: Path) -> None:
    ctx, algorithm = setup
    mask = sitk.GetImageFromArray(np.array([[0, 1], [1, 5]], dtype=np.uint8))
    sitk.WriteImage(mask, str(tmp_path / "mask.mha"))
    upload = put_upload(ctx, "mask.mha", tmp_path / "mask.mha")
    job = new_job(ctx, algorithm, [JobInput(interface="mask", user_uploads=[upload.pk])])
    validate_pending_inputs(ctx, job.pk)
    done = ctx.store.jobs.get(job.pk)
    assert done.status is JobStatus.FAILURE
    assert "voxel values [5]" in done.error_message


def test_rerun_is_idempotent(setup, tmp_path: Path) -> None:
    ctx, algorithm = setup
    sitk.WriteImage(volume(), str(tmp_path / "scan.nii.gz"))
    upload = put_upload(ctx, "scan.nii.gz", tmp_path / "scan.nii.gz")
    job = new_job(ctx, algorithm, [JobInput(interface="ct-image", user_uploads=[upload.pk])])

    validate_pending_inputs(ctx, job.pk)
    first = ctx.store.jobs.get(job.pk)
    validate_pending_inputs(ctx, job.pk)  # a duplicate message after the job moved on

    assert ctx.store.jobs.get(job.pk) == first
    assert ctx.compute.submitted == [job.pk]
    assert ctx.store.images.page_for(ALICE, offset=0, limit=10)[1] == 1
    listed = ctx.clients.s3.list_objects_v2(
        Bucket=ctx.settings.bucket_name, Prefix="values/images/"
    )
    assert [o["Key"] for o in listed["Contents"]] == [first_key(ctx, first)]


def first_key(ctx, job: Job) -> str:
    return ctx.store.images.get(job.inputs[0].image).files[0].key


def test_unknown_job_and_finished_job_are_ignored(setup) -> None:
    ctx, _ = setup
    validate_pending_inputs(ctx, str(uuid.uuid4()))  # no error, nothing written
    assert ctx.compute.submitted == []


def test_a_mha_header_is_read_without_the_voxels(ctx, tmp_path: Path) -> None:
    """The header of a .mha comes by one ranged read; whatever cannot be read that way (an
    empty object, another format, no data line near the start) is left to a download."""
    from gantry.pipeline import headers

    sitk.WriteImage(volume(), str(tmp_path / "scan.mha"))
    whole = (tmp_path / "scan.mha").read_bytes()
    s3, bucket = ctx.clients.s3, ctx.settings.bucket_name
    s3.put_object(Bucket=bucket, Key="uploads/a/scan.mha", Body=whole)
    header = headers.fetch_mha_header(s3, bucket, "uploads/a/scan.mha", tmp_path / "h" / "a.mha")
    assert header is not None
    text = header.read_bytes()
    assert whole.startswith(text) and text.endswith(b"ElementDataFile = LOCAL\n")
    assert len(text) < len(whole)
    s3.put_object(Bucket=bucket, Key="uploads/a/empty.mha", Body=b"")
    s3.put_object(Bucket=bucket, Key="uploads/a/long.mha", Body=b"x" * headers.HEADER_LIMIT + whole)
    s3.put_object(Bucket=bucket, Key="uploads/a/scan.nrrd", Body=whole)
    for key in ("uploads/a/empty.mha", "uploads/a/long.mha", "uploads/a/scan.nrrd"):
        assert headers.fetch_mha_header(s3, bucket, key, tmp_path / "h" / "b.mha") is None, key
    with pytest.raises(s3.exceptions.ClientError):
        headers.fetch_mha_header(s3, bucket, "uploads/a/gone.mha", tmp_path / "h" / "c.mha")


# --- large images: checked where they lie, in bounded reads ----------------------------------


def record_gets(ctx) -> list[dict]:
    """The GetObject calls this context's S3 client makes from now on (their parameters)."""
    calls: list[dict] = []

    def record(params, **_):
        calls.append(dict(params))

    ctx.clients.s3.meta.events.register("provide-client-params.s3.GetObject", record)
    return calls


def bytes_asked(calls: list[dict], key: str) -> list[int | None]:
    """The length of each GetObject of ``key`` (None for a GET of the whole object)."""
    sizes: list[int | None] = []
    for call in calls:
        if call["Key"] != key:
            continue
        if "Range" not in call:
            sizes.append(None)
            continue
        first, last = call["Range"].removeprefix("bytes=").split("-")
        sizes.append(int(last) - int(first) + 1)
    return sizes


def write_mask(path: Path, array: np.ndarray, how: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if how.startswith("mha"):
        sitk.WriteImage(sitk.GetImageFromArray(array), str(path), how == "mha-zlib")
    elif how == "tif":
        tifffile.imwrite(path, array)  # uncompressed, one contiguous run of bytes
    elif how == "tif-pages":
        with tifffile.TiffWriter(path) as writer:  # tags between pages: page by page
            for page in array:
                writer.write(page, rowsperstrip=100, metadata=None)
    else:
        tifffile.imwrite(path, array, tile=(128, 128), compression="zlib")
    return path


MASK_SHAPE = (48, 512, 512)  # 12 MiB of uint8: several of the checker's 4 MiB reads


@pytest.mark.parametrize(
    ("name", "how"),
    [
        ("mask.mha", "mha"),
        ("mask.mha", "mha-zlib"),
        ("mask.tif", "tif"),
        ("mask.tif", "tif-pages"),
        ("mask.tiff", "tif-tiles"),
    ],
)
def test_a_large_segmentation_is_checked_in_bounded_reads(setup, tmp_path: Path, name, how):
    """Every voxel is checked, the last one too, without downloading the file: only ranged
    reads of a few MiB each; an accepted mask is stored by a copy of the upload."""
    ctx, algorithm = setup
    mask = np.zeros(MASK_SHAPE, dtype=np.uint8)
    mask[10:20, 100:200, 100:200] = 1
    bad = mask.copy()
    bad[-1, -1, -1] = 5  # the very last voxel
    calls = record_gets(ctx)

    refused = put_upload(ctx, name, write_mask(tmp_path / "bad" / name, bad, how))
    job = new_job(ctx, algorithm, [JobInput(interface="mask", user_uploads=[refused.pk])])
    validate_pending_inputs(ctx, job.pk)
    done = ctx.store.jobs.get(job.pk)
    assert done.status is JobStatus.FAILURE
    assert done.error_message == (
        "Input 'mask': the segmentation contains the voxel values [5]; the valid values for "
        "this interface are [0, 1]"
    )

    good_path = write_mask(tmp_path / "good" / name, mask, how)
    accepted = put_upload(ctx, name, good_path)
    job = new_job(ctx, algorithm, [JobInput(interface="mask", user_uploads=[accepted.pk])])
    validate_pending_inputs(ctx, job.pk)
    done = ctx.store.jobs.get(job.pk)
    assert done.status is JobStatus.PROVISIONED, done.error_message
    image = ctx.store.images.get(done.inputs[0].image)
    assert image.shape == list(MASK_SHAPE) and image.files[0].filename == name
    assert read_key(ctx, image.files[0].key) == good_path.read_bytes()

    for upload in (refused, accepted):
        sizes = bytes_asked(calls, upload.key)
        ranged = [size for size in sizes if size is not None]
        assert sizes and ranged == sizes, "the whole object was downloaded"
        assert max(ranged) <= 4 * 1024 * 1024


@pytest.mark.parametrize("how", ["mha", "tif"])
def test_segmentation_data_cut_short_fails_the_job(setup, tmp_path: Path, how) -> None:
    ctx, algorithm = setup
    name = f"mask.{how}"
    whole = write_mask(tmp_path / name, np.zeros((8, 64, 64), dtype=np.uint8), how).read_bytes()
    cut = whole[:-100] if how == "mha" else whole[: len(whole) // 2]
    upload = put_upload(ctx, name, cut)
    job = new_job(ctx, algorithm, [JobInput(interface="mask", user_uploads=[upload.pk])])
    validate_pending_inputs(ctx, job.pk)
    done = ctx.store.jobs.get(job.pk)
    assert done.status is JobStatus.FAILURE
    assert done.error_message.startswith(
        f"Input 'mask': the file '{name}' is not a readable image: "
    ), done.error_message
    assert ctx.compute.submitted == []


def test_a_tiff_is_checked_from_its_tags_not_its_pixels(setup, tmp_path: Path) -> None:
    """An image input in TIFF: its size and spacing come from its tags, read by ranged GETs;
    the pixels are neither downloaded nor read."""
    ctx, algorithm = setup
    path = tmp_path / "slide.tif"
    pixels = np.random.default_rng(1).integers(0, 255, (2048, 2048, 3), dtype=np.uint8)
    tifffile.imwrite(path, pixels, photometric="rgb", tile=(256, 256), resolution=(100, 100))
    upload = put_upload(ctx, "slide.tif", path)
    calls = record_gets(ctx)
    job = new_job(ctx, algorithm, [JobInput(interface="ct-image", user_uploads=[upload.pk])])
    validate_pending_inputs(ctx, job.pk)
    done = ctx.store.jobs.get(job.pk)
    assert done.status is JobStatus.PROVISIONED, done.error_message
    image = ctx.store.images.get(done.inputs[0].image)
    assert image.shape == [2048, 2048, 3] and image.color_space == "RGB"
    sizes = bytes_asked(calls, upload.key)
    ranged = [size for size in sizes if size is not None]
    assert ranged == sizes and sum(ranged) <= 256 * 1024 < path.stat().st_size // 40
