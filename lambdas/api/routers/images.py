"""cases/images/: the images you uploaded or your jobs produced, and their files."""

from __future__ import annotations

from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from gantry import access, shapes
from gantry.access import Action
from gantry.context import Context
from gantry.errors import NotFound
from gantry.images import Image
from gantry.services import upload_sessions
from gantry.services.archives import referenced_archive
from gantry.urls import Urls
from gantry.users import User
from lambdas.api.deps import DEFAULT_LIMIT, Limit, Offset, current_user, urls_for
from lambdas.api.files import redirect_to_object

Ref = Annotated[str | None, Query(max_length=1024)]


def readable(ctx: Context, user: User, image: Image) -> bool:
    """Whether the user may read the image: its owner, an admin, a member of an archive that
    holds it, or one who may see the data of a job that used or produced it."""
    if access.image(user, Action.READ, image, ctx.store.archives.holding(image.pk)):
        return True
    jobs = ctx.store.jobs.of_image(image.pk)
    owners = {a: ctx.store.algorithms.find(a) for a in {j.algorithm for j in jobs}}
    return access.image(user, Action.READ, image, jobs=[(j, owners[j.algorithm]) for j in jobs])


def visible_image(ctx: Context, user: User, pk: str) -> Image:
    """The image if the user may read it; else 404."""
    image = ctx.store.images.get(pk)
    if not readable(ctx, user, image):
        raise NotFound(f"Image {pk} not found")
    return image


def _job_images(ctx: Context, user: User, ref: str, urls: Urls, role: str) -> list[str]:
    """The images a job took as inputs or produced; none when the caller may not see the
    job's data (as for a job that does not exist)."""
    from lambdas.api.routers.jobs import visible_job

    try:
        job = visible_job(ctx, user, urls.pk_from(ref, "algorithms/jobs/"))
    except (ValueError, NotFound):
        return []
    if not access.job_data(user, job, ctx.store.algorithms.find(job.algorithm)):
        return []
    values = job.inputs if role == "input" else job.outputs
    return [v.image for v in values if v.image]


def _session_images(ctx: Context, user: User, ref: str, urls: Urls) -> list[str]:
    try:
        pk = urls.pk_from(ref, "cases/upload-sessions/")
        return upload_sessions.get_visible(ctx, user, pk).images
    except (ValueError, NotFound):
        return []


def build(ctx: Context) -> APIGatewayRouter:
    router = APIGatewayRouter()

    @router.get(
        "/cases/images/",
        summary="List your images (admins: everyone's), or an archive's; filter by a job's "
        "inputs or outputs or an upload session",
    )
    def list_images(
        archive: Ref = None,
        job_input: Ref = None,
        job_output: Ref = None,
        origin: Ref = None,
        limit: Limit = DEFAULT_LIMIT,
        offset: Offset = 0,
    ) -> dict:
        user = current_user(router)
        urls = urls_for(ctx, router)
        query = {
            "archive": archive,
            "job_input": job_input,
            "job_output": job_output,
            "origin": origin,
        }
        found_archive = referenced_archive(ctx, user, urls, archive) if archive else None
        selections = []
        if job_input:
            selections.append(_job_images(ctx, user, job_input, urls, "input"))
        if job_output:
            selections.append(_job_images(ctx, user, job_output, urls, "output"))
        if origin:
            selections.append(_session_images(ctx, user, origin, urls))
        if not selections and found_archive is not None:
            pks, count = ctx.store.archives.page_images(
                found_archive.pk, offset=offset, limit=limit
            )
            by_pk = ctx.store.images.get_many(pks)
            images = [by_pk[pk] for pk in pks if pk in by_pk]
        elif not selections and access.sees_everything(user):
            images, count = ctx.store.images.page_all(offset=offset, limit=limit)
        elif not selections:
            images, count = ctx.store.images.page_for(user.username, offset=offset, limit=limit)
        else:
            # Few images per job or session: filter them all, in the order first named.
            wanted = [pk for pk in dict.fromkeys(selections[0]) if all(pk in s for s in selections)]
            found = ctx.store.images.get_many(wanted)
            visible = []
            for pk in wanted:
                image = found.get(pk)
                if image is None or (
                    found_archive is not None
                    and found_archive.pk not in ctx.store.archives.archives_of_image(pk)
                ):
                    continue
                if readable(ctx, user, image):
                    visible.append(image)
            images, count = visible[offset : offset + limit], len(visible)
        results = [shapes.image(i, urls) for i in images]
        return shapes.page(results, count, offset, limit, urls, "cases/images/", query)

    @router.get("/cases/images/<pk>/", summary="Get an image")
    def get_image(pk: str) -> dict:
        user = current_user(router)
        return shapes.image(visible_image(ctx, user, pk), urls_for(ctx, router))

    @router.get("/cases/images/<pk>/files/<file_pk>/<filename>", summary="Download an image file")
    def get_image_file(pk: str, file_pk: str, filename: str):
        user = current_user(router)
        image = visible_image(ctx, user, pk)
        for image_file in image.files:
            if image_file.pk == file_pk and image_file.filename == filename:
                return redirect_to_object(ctx, image_file.key, filename)
        raise NotFound(f"File {file_pk} of image {pk} not found")

    return router
