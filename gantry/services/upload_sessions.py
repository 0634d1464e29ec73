"""Upload sessions on the API's side: check the uploads, store the session, queue its import.

The import itself (reading and converting images) runs in the upload handler
(gantry.pipeline.upload_sessions), off the request's path.
"""

from __future__ import annotations

import uuid

from gantry import access, timeutil
from gantry.access import Action
from gantry.context import Context
from gantry.errors import NotFound, ValidationFailed
from gantry.kinds import spec
from gantry.upload_sessions import UploadSession, UploadSessionCreate
from gantry.uploads import UploadStatus
from gantry.urls import Urls
from gantry.users import User

# Where grand-challenge can also put a session's images; Gantry has no reader studies.
_UNSUPPORTED_TARGETS = ("answer", "display_set")
# The socket of new archive items when none is named (grand-challenge's default).
DEFAULT_ARCHIVE_INTERFACE = "generic-medical-image"


def create(ctx: Context, user: User, body: UploadSessionCreate, urls: Urls) -> UploadSession:
    for name in _UNSUPPORTED_TARGETS:
        if getattr(body, name) is not None:
            raise ValidationFailed(
                f"Adding the images to an {name.replace('_', ' ')} is not supported", field=name
            )
    target = _target(ctx, user, body, urls)
    field = "user_uploads" if body.user_uploads else "uploads"
    upload_pks = [_own_completed_upload(ctx, user, ref, urls, field) for ref in body.upload_refs]
    session = UploadSession(
        pk=str(uuid.uuid4()),
        creator=user.username,
        created=timeutil.iso(),
        uploads=upload_pks,
        **target,
    )
    ctx.store.upload_sessions.create(session)
    from gantry.pipeline.wiring import import_upload_session_message

    ctx.clients.sqs.send_message(
        QueueUrl=ctx.settings.uploads_queue_url,
        MessageBody=import_upload_session_message(session.pk),
    )
    return session


def _target(
    ctx: Context, user: User, body: UploadSessionCreate, urls: Urls
) -> dict[str, str | None]:
    """The archive or archive item the images go to, checked: the caller must be allowed to
    add to it, and the socket must take an image."""
    from gantry.services import archives

    if body.archive is not None and body.archive_item is not None:
        raise ValidationFailed("Give an archive or an archive item, not both", field="archive")
    if body.archive is None and body.archive_item is None:
        if body.interface is not None:
            raise ValidationFailed(
                "An interface can only be given with an archive or an archive item",
                field="interface",
            )
        return {}
    if body.archive is not None:
        archive = archives.referenced_archive(ctx, user, urls, body.archive)
        if not access.archive_item(user, Action.CHANGE, archive):
            raise ValidationFailed(
                f"You may not add items to the archive '{archive.slug}': ask one of its "
                "editors to make you an uploader",
                field="archive",
            )
        target: dict[str, str | None] = {
            "archive": archive.pk,
            "interface": body.interface or DEFAULT_ARCHIVE_INTERFACE,
        }
    else:
        if body.interface is None:
            raise ValidationFailed(
                "Name the interface of the archive item's value", field="interface"
            )
        try:
            item_pk = urls.pk_from(body.archive_item or "", "archives/items/")
            item, _ = archives.visible_item(ctx, user, item_pk, Action.CHANGE)
        except (ValueError, NotFound) as error:
            raise ValidationFailed(
                f"Archive item '{body.archive_item}' not found", field="archive_item"
            ) from error
        target = {"archive_item": item.pk, "interface": body.interface}
    slug = target["interface"] or ""
    try:
        socket = ctx.store.sockets.get_by_slug(slug)
    except NotFound as error:
        raise ValidationFailed(f"Interface '{slug}' not found", field="interface") from error
    if not spec(socket.kind).is_image:
        raise ValidationFailed(
            f"Interface '{slug}' is a {spec(socket.kind).label}, not an image", field="interface"
        )
    return target


def get_visible(ctx: Context, user: User, pk: str) -> UploadSession:
    """The session if the user may read it; "not found" otherwise."""
    session = ctx.store.upload_sessions.get(pk)
    if not access.upload_session(user, Action.READ, session.creator):
        raise NotFound(f"Upload session {pk} not found")
    return session


def _own_completed_upload(ctx: Context, user: User, ref: str, urls: Urls, field: str) -> str:
    try:
        upload = ctx.store.uploads.get(urls.pk_from(ref, "uploads/"))
    except (ValueError, NotFound) as error:
        raise ValidationFailed(f"Upload '{ref}' not found", field=field) from error
    if not access.upload(user, Action.USE, upload):
        raise ValidationFailed(f"Upload '{ref}' not found", field=field)
    if upload.status is not UploadStatus.COMPLETED:
        raise ValidationFailed(f"Upload '{upload.filename}' is not completed", field=field)
    return upload.pk
