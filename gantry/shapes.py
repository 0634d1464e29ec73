"""The JSON shapes of the API: grand-challenge's, field for field, so gcapi parses them.

Every key is always present (null when empty). Gantry's extra fields come after.
"""

from __future__ import annotations

import posixpath
from typing import Any

from gantry import timeutil
from gantry.algorithms import Algorithm, AlgorithmImage, AlgorithmModel, ImportStatus
from gantry.archives import Archive, ArchiveItem, ArchiveRun
from gantry.images import Image
from gantry.interfaces import Interface, to_api
from gantry.jobs import Job, SocketValue
from gantry.upload_sessions import UploadSession
from gantry.uploads import Upload
from gantry.urls import Urls


def interface(socket: Interface) -> dict[str, Any]:
    return to_api(socket)


def algorithm(alg: Algorithm, sockets: dict[str, Interface], urls: Urls) -> dict[str, Any]:
    def socket_list(slugs: list[str]) -> list[dict[str, Any]]:
        return [to_api(sockets[slug]) for slug in slugs if slug in sockets]

    return {
        "api_url": urls.algorithm(alg.pk),
        "url": urls.algorithm(alg.pk),
        "description": alg.description,
        "pk": alg.pk,
        "title": alg.title,
        "logo": "",
        "slug": alg.slug,
        "average_duration": None,
        "interfaces": [
            {"inputs": socket_list(s.inputs), "outputs": socket_list(s.outputs)}
            for s in alg.interfaces
        ],
        # Before socket sets, an algorithm had one list of each; gcapi up to 0.12 reads them.
        # They are the first socket set's, the one such clients can fill.
        "inputs": socket_list(alg.interfaces[0].inputs) if alg.interfaces else [],
        "outputs": socket_list(alg.interfaces[0].outputs) if alg.interfaces else [],
        "time_limit": alg.time_limit,
        "requires_gpu_type": alg.requires_gpu_type.value,
        "requires_memory_gb": alg.requires_memory_gb,
        "created": alg.created,
        "modified": alg.modified,
        # Algorithms registered from a bioimage.io model package: how its import stands.
        "bioimageio": _bioimageio(alg),
    }


def _bioimageio(alg: Algorithm) -> dict[str, Any] | None:
    record = alg.bioimageio
    if record is None:
        return None
    return {
        "import_status": record.import_status.value,
        "status_message": record.status_message,
        "filename": record.filename,
        "name": record.name,
        "format_version": record.format_version,
        "weights_format": record.weights_format,
    }


def algorithm_image(image: AlgorithmImage, urls: Urls) -> dict[str, Any]:
    return {
        "pk": image.pk,
        "url": urls.algorithm_image(image.pk),
        "api_url": urls.algorithm_image(image.pk),
        "algorithm": urls.algorithm(image.algorithm),
        "created": image.created,
        "import_status": image.import_status.value,
        "image": image.image,
        "is_desired_version": image.is_desired_version,
        "is_manifest_valid": image.is_manifest_valid,
        # A registered image (no upload) names where it already is.
        "is_in_registry": image.is_in_registry
        or (image.user_upload is None and image.import_status is ImportStatus.COMPLETED),
        "image_sha256": image.sha256,
        "sha256": image.sha256,
        "command": image.command,
        "entrypoint": image.entrypoint,
        "status": image.status_message,
        "user_upload": urls.upload(image.user_upload) if image.user_upload else None,
    }


def algorithm_model(model: AlgorithmModel, urls: Urls, *, desired: bool) -> dict[str, Any]:
    """grand-challenge's AlgorithmModel fields (its serializer's and the Tarball's)."""
    return {
        "pk": model.pk,
        "api_url": urls.algorithm_model(model.pk),
        "algorithm": urls.algorithm(model.algorithm),
        "created": model.created,
        "import_status": model.import_status.value,
        "status": model.status_message,
        "is_desired_version": desired,
        "sha256": model.sha256,
        "size_in_storage": model.size_in_storage,
        "comment": model.comment,
        "user_upload": urls.upload(model.user_upload) if model.user_upload else None,
    }


def socket_value(
    value: SocketValue, job_pk: str, sockets: dict[str, Interface], urls: Urls
) -> dict[str, Any]:
    socket = to_api(sockets[value.socket]) if value.socket in sockets else None
    file_url = (
        urls.value_file(job_pk, value.pk, posixpath.basename(value.file)) if value.file else None
    )
    return {
        "socket": socket,
        "interface": socket,
        "value": value.value,
        "file": file_url,
        "image": urls.image(value.image) if value.image else None,
        "pk": value.pk,
    }


def job(
    job: Job, sockets: dict[str, Interface], urls: Urls, *, with_data: bool = True
) -> dict[str, Any]:
    """``with_data=False`` (an editor's view of another user's job) leaves out the values."""
    return {
        "pk": job.pk,
        "url": urls.job(job.pk),
        "api_url": urls.job(job.pk),
        "algorithm_image": urls.algorithm_image(job.algorithm_image),
        "inputs": [socket_value(v, job.pk, sockets, urls) for v in job.inputs] if with_data else [],
        "outputs": [socket_value(v, job.pk, sockets, urls) for v in job.outputs]
        if with_data
        else [],
        "status": job.status.label,
        "hanging_protocol": None,
        "optional_hanging_protocols": [],
        "view_content": {},
        "exec_duration": timeutil.duration_string(job.exec_duration),
        "invoke_duration": timeutil.duration_string(job.invoke_duration),
        "algorithm": urls.algorithm(job.algorithm),
        # Gantry's additions
        "created": job.created,
        "modified": job.modified,
        "started_at": job.started_at,
        "completed_at": job.completed_at,
        "attempt": job.attempt,
        "error_message": job.error_message,
        "detailed_error_message": job.detailed_error_message,
        "stdout": job.stdout,
        "stderr": job.stderr,
        "time_limit": job.time_limit,
        "requires_gpu_type": job.requires_gpu_type,
        "requires_memory_gb": job.requires_memory_gb,
        "runtime_metrics": job.runtime_metrics,
        "creator": job.creator,
        # What the job runs with, so that its result can be reproduced: grand-challenge's
        # algorithm_model link, the image's config sha256 and the model tarball's sha256.
        "algorithm_model": urls.algorithm_model(job.algorithm_model)
        if job.algorithm_model
        else None,
        "algorithm_image_sha256": job.algorithm_image_sha256,
        "algorithm_model_sha256": job.algorithm_model_sha256,
        "viewers": job.viewers,
        "share_with_editors": job.share_with_editors,
        "credits_consumed": job.credits_consumed,
        "is_complimentary": job.is_complimentary,
    }


def job_post(job: Job) -> dict[str, Any]:
    """The body grand-challenge returns on job creation (gcapi's JobPost)."""
    return {
        "pk": job.pk,
        "inputs": [
            {
                "interface": v.socket,
                "value": v.value,
                "file": v.file,
                "image": v.image,
                "pk": v.pk,
                "image_name": None,
            }
            for v in job.inputs
        ],
        "status": job.status.label,
    }


def archive(arc: Archive, urls: Urls) -> dict[str, Any]:
    """grand-challenge's archive; ``name`` and ``id`` as its older API had them (the
    algorithms tutorial reads both)."""
    return {
        "pk": arc.pk,
        "title": arc.title,
        "logo": "",
        "description": arc.description,
        "api_url": urls.archive(arc.pk),
        "url": urls.site(f"archives/{arc.slug}/"),
        # Gantry's additions
        "id": arc.pk,
        "name": arc.title,
        "slug": arc.slug,
        "editors": arc.editors,
        "uploaders": arc.uploaders,
        "users": arc.users,
        "creator": arc.creator,
        "created": arc.created,
        "modified": arc.modified,
    }


def archive_item(item: ArchiveItem, sockets: dict[str, Interface], urls: Urls) -> dict[str, Any]:
    """grand-challenge's archive item; values still being imported are left out (listed in
    ``pending``), values that could not be added are named in ``errors``."""
    values = []
    for value in item.values:
        if value.pending_upload or value.pending_uploads:
            continue
        socket = to_api(sockets[value.socket]) if value.socket in sockets else None
        file_url = (
            urls.archive_item_file(item.pk, value.pk, posixpath.basename(value.file))
            if value.file
            else None
        )
        values.append(
            {
                "socket": socket,
                "interface": socket,
                "value": value.value,
                "file": file_url,
                "image": urls.image(value.image) if value.image else None,
                "pk": value.pk,
            }
        )
    return {
        "pk": item.pk,
        "title": item.title,
        "archive": urls.archive(item.archive),
        "values": values,
        "hanging_protocol": None,
        "optional_hanging_protocols": [],
        "view_content": {},
        # Gantry's additions
        "api_url": urls.archive_item(item.pk),
        "pending": sorted({v.socket for v in item.values if v.pending_upload or v.pending_uploads}),
        "errors": item.errors,
        "created": item.created,
        "modified": item.modified,
    }


def archive_item_post(item: ArchiveItem, urls: Urls) -> dict[str, Any]:
    """The body grand-challenge returns when an item is created or changed (gcapi's
    ArchiveItemPost): values name their interface by slug."""
    return {
        **archive_item(item, {}, urls),
        "values": [
            {
                "interface": v.socket,
                "value": v.value,
                "file": urls.archive_item_file(item.pk, v.pk, posixpath.basename(v.file))
                if v.file
                else None,
                "image": urls.image(v.image) if v.image else None,
                "pk": v.pk,
                "image_name": None,
            }
            for v in item.values
            if not (v.pending_upload or v.pending_uploads)
        ],
    }


def archive_run(run: ArchiveRun, counts: dict[str, Any], urls: Urls) -> dict[str, Any]:
    """Gantry's run of an algorithm over an archive, with its progress ``counts``."""
    return {
        "pk": run.pk,
        "api_url": urls.path(f"algorithms/{run.algorithm}/archive-runs/{run.pk}/"),
        "algorithm": urls.algorithm(run.algorithm),
        "algorithm_image": urls.algorithm_image(run.algorithm_image),
        "archive": urls.archive(run.archive),
        "state": run.state.value,
        "stopped_reason": run.stopped_reason,
        "rerun": run.rerun,
        "write_back": run.write_back,
        "total": run.total,
        **counts,
        "creator": run.creator,
        "created": run.created,
        "modified": run.modified,
    }


def image(img: Image, urls: Urls) -> dict[str, Any]:
    return {
        "pk": img.pk,
        "name": img.name,
        "files": [
            {
                "pk": f.pk,
                "image": urls.image(img.pk),
                "file": urls.image_file(img.pk, f.pk, f.filename),
                "image_type": f.image_type.value,
            }
            for f in img.files
        ],
        "dicom_image_set": None,
        "width": img.width,
        "height": img.height,
        "depth": img.depth,
        "color_space": img.color_space,
        "modality": None,
        "eye_choice": None,
        "stereoscopic_choice": None,
        "field_of_view": None,
        "shape_without_color": img.shape_without_color,
        "shape": img.shape,
        "voxel_width_mm": img.voxel_width_mm,
        "voxel_height_mm": img.voxel_height_mm,
        "voxel_depth_mm": img.voxel_depth_mm,
        "api_url": urls.image(img.pk),
        "window_center": img.window_center,
        "window_width": img.window_width,
        "segments": img.segments,
        "created": img.created,
    }


def upload(up: Upload, urls: Urls, **extra: Any) -> dict[str, Any]:
    return {
        "pk": up.pk,
        "created": up.created,
        "filename": up.filename,
        "key": up.key,
        "s3_upload_id": up.s3_upload_id,
        "status": up.status.value,
        "api_url": urls.upload(up.pk),
        **extra,
    }


def upload_session(session: UploadSession, urls: Urls) -> dict[str, Any]:
    upload_urls = [urls.upload(pk) for pk in session.uploads]
    return {
        "pk": session.pk,
        # grand-challenge's creator is an integer user id; Gantry's users have names only.
        "creator": None,
        "status": session.status.value,
        "error_message": session.error_message,
        "image_set": [urls.image(pk) for pk in session.images],
        "api_url": urls.upload_session(session.pk),
        "user_uploads": upload_urls,
        "uploads": upload_urls,
        # Gantry's addition: why each file that failed is not an image
        "file_errors": session.file_errors,
        "created": session.created,
    }


def page(
    results: list[dict[str, Any]],
    count: int,
    offset: int,
    limit: int,
    urls: Urls,
    path: str,
    query: dict[str, Any],
) -> dict[str, Any]:
    """DRF's limit/offset page."""
    params = {k: v for k, v in query.items() if k not in ("limit", "offset") and v is not None}
    nxt = (
        urls.path(path, **params, limit=limit, offset=offset + limit)
        if offset + len(results) < count and results
        else None
    )
    prev = (
        urls.path(path, **params, limit=limit, offset=max(0, offset - limit))
        if offset > 0
        else None
    )
    return {"count": count, "next": nxt, "previous": prev, "results": results}
