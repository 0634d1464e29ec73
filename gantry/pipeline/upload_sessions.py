"""Import an upload session: every image among its uploads becomes an image of its creator.

Runs from the upload handler for an ``import-upload-session`` message, at least once and
possibly twice at the same time: image pks derive from the session and the file name, so a
rerun overwrites instead of duplicating, and a final session is never imported again.
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from pathlib import Path
from typing import Any

from gantry.context import Context
from gantry.errors import NotFound
from gantry.pipeline.inputs import InputError, download_upload, store_prepared_image
from gantry.upload_sessions import UploadSession, UploadSessionStatus
from gantry.uploads import Upload, UploadStatus

logger = logging.getLogger(__name__)
S = UploadSessionStatus


def image_pk_for(session_pk: str, filename: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"gantry:upload-session:{session_pk}:{filename}"))


def group_image_files(paths: list[Path]) -> list[list[Path]]:
    """The files of each image, in upload order: all DICOM files together (one series), a
    .mhd header with the data files of its name, every other file alone."""
    from gantry import imaging

    suffixes = {p: imaging.suffix_of(p) for p in paths}
    stem = {p: p.name[: len(p.name) - len(suffixes[p])] for p in paths}
    headers = {stem[p]: p for p in paths if suffixes[p] == ".mhd"}
    groups: dict[Path, list[Path]] = {}
    dicom: list[Path] = []
    for path in paths:
        suffix = suffixes[path]
        if suffix == ".dcm":
            dicom.append(path)
        elif suffix in imaging.DATA_SUFFIXES and stem[path] in headers:
            groups.setdefault(headers[stem[path]], []).append(path)
        else:
            groups.setdefault(path, []).insert(0, path)
    result = list(groups.values())
    if dicom:
        result.append(dicom)
    return result


def import_upload_session(ctx: Context, session_pk: str) -> UploadSession | None:
    try:
        session = ctx.store.upload_sessions.get(session_pk)
    except NotFound:
        return None
    if session.status.is_final:
        return session  # a duplicate message
    ctx.store.upload_sessions.update(
        session_pk,
        lambda s: None if s.status.is_final else s.model_copy(update={"status": S.STARTED}),
    )
    images: list[str] = []
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="gantry-session-") as scratch:
        work = Path(scratch)
        uploads: dict[Path, Upload] = {}
        for upload_pk in session.uploads:
            try:
                upload = _upload(ctx, session, upload_pk)
                uploads[download_upload(ctx, upload, work / "upload")] = upload
            except InputError as error:
                errors[upload_pk] = str(error)
        for number, group in enumerate(group_image_files(list(uploads))):
            try:
                sources = [uploads[path] for path in group]
                images.append(_import(ctx, session, group, sources, work / f"image-{number}"))
            except InputError as error:
                for path in group:
                    errors[path.name] = str(error)

    if session.archive_item is not None and len(images) > 1:
        errors["archive_item"] = (
            f"an archive item's value takes one image; the files hold {len(images)}"
        )
    elif session.archive is not None or session.archive_item is not None:
        _place(ctx, session, images)

    def finish(current: UploadSession) -> UploadSession | None:
        if current.status.is_final:
            return None
        update: dict[str, Any]
        if errors:
            count = len(errors)
            files = "file" if count == 1 else "files"
            detail = "; ".join(f"{name}: {message}" for name, message in errors.items())
            message = f"{count} {files} could not be imported: {detail}"
            update = {"status": S.FAILED, "error_message": message, "file_errors": errors}
        else:
            update = {"status": S.SUCCEEDED, "error_message": None, "file_errors": {}}
        return current.model_copy(update={**update, "images": images})

    return ctx.store.upload_sessions.update(session_pk, finish)


def _place(ctx: Context, session: UploadSession, images: list[str]) -> None:
    """Each image a new item of the session's archive, or the value of its archive item, under
    its interface. Rerun-safe: an item's pk derives from its image, and a value already there
    is left alone."""
    from gantry import timeutil
    from gantry.archives import ArchiveItem
    from gantry.jobs import SocketValue
    from gantry.services.archives import with_values
    from gantry.store.table import ConditionFailed

    socket = session.interface or ""
    pks = ctx.store.table.next_ids("socket_value", len(images))
    values = [
        SocketValue(pk=pk, socket=socket, image=image)
        for pk, image in zip(pks, images, strict=True)
    ]
    if session.archive_item is not None:
        for value in values:

            def change(item: ArchiveItem, value: SocketValue = value) -> ArchiveItem | None:
                current = item.value_of(socket)
                if current is not None and current.image == value.image:
                    return None
                return with_values(item, [value])

            ctx.store.archives.update_item(session.archive_item, change)
        return
    for value in values:
        moment = timeutil.iso()
        item = ArchiveItem(
            pk=str(uuid.uuid5(uuid.NAMESPACE_URL, f"gantry:upload-session-item:{value.image}")),
            archive=session.archive or "",
            title=ctx.store.images.get(value.image or "").name,
            values=[value],
            creator=session.creator,
            created=moment,
            modified=moment,
        )
        try:
            ctx.store.archives.create_item(item)
        except ConditionFailed:
            # A rerun: the item is there; list its image in case the first run stopped short.
            ctx.store.archives.relate_images(ctx.store.archives.get_item(item.pk))


def _upload(ctx: Context, session: UploadSession, pk: str) -> Upload:
    try:
        upload = ctx.store.uploads.get(pk)
    except NotFound:
        raise InputError(f"the upload {pk} no longer exists") from None
    # Checked when the session was created; repeated because this handler trusts no message.
    if upload.creator != session.creator or upload.status is not UploadStatus.COMPLETED:
        raise InputError(f"the upload {pk} is not a completed upload of the session's creator")
    return upload


def _import(
    ctx: Context, session: UploadSession, files: list[Path], sources: list[Upload], work: Path
) -> str:
    from gantry import imaging

    names = ", ".join(f"'{p.name}'" for p in files)
    try:
        prepared = imaging.prepare_image(files, work)
        primary, _ = imaging.primary_file(files)
    except imaging.ImageError as error:
        what = f"the file {names} is" if len(files) == 1 else f"the files {names} are"
        raise InputError(f"{what} not a readable image: {error}") from None
    pk = image_pk_for(session.pk, primary.name)
    store_prepared_image(ctx, prepared, files, image_pk=pk, owner=session.creator, uploads=sources)
    return pk
