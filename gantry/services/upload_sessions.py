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
from gantry.upload_sessions import UploadSession, UploadSessionCreate
from gantry.uploads import UploadStatus
from gantry.urls import Urls
from gantry.users import User

# Collections a session can add its images to on grand-challenge; Gantry keeps the images
# with their uploader only.
_UNSUPPORTED_TARGETS = ("archive", "archive_item", "answer", "display_set")


def create(ctx: Context, user: User, body: UploadSessionCreate, urls: Urls) -> UploadSession:
    for name in _UNSUPPORTED_TARGETS:
        if getattr(body, name) is not None:
            raise ValidationFailed(
                f"Adding the images to an {name.replace('_', ' ')} is not supported", field=name
            )
    field = "user_uploads" if body.user_uploads else "uploads"
    upload_pks = [_own_completed_upload(ctx, user, ref, urls, field) for ref in body.upload_refs]
    session = UploadSession(
        pk=str(uuid.uuid4()), creator=user.username, created=timeutil.iso(), uploads=upload_pks
    )
    ctx.store.upload_sessions.create(session)
    from gantry.pipeline.wiring import import_upload_session_message

    ctx.clients.sqs.send_message(
        QueueUrl=ctx.settings.uploads_queue_url,
        MessageBody=import_upload_session_message(session.pk),
    )
    return session


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
