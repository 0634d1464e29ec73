"""algorithms/jobs/: create, list (with grand-challenge's filters), detail, value files."""

from __future__ import annotations

import posixpath
from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Body, Query
from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from gantry import access, shapes
from gantry.access import Action
from gantry.context import Context
from gantry.errors import NotFound, PermissionDenied
from gantry.jobs import Job
from gantry.pipeline.cancel import cancel_job
from gantry.services import catalog
from gantry.services.jobs import JobCreate, create_job
from gantry.store.jobs import INPUT, OUTPUT
from gantry.users import User
from lambdas.api.deps import DEFAULT_LIMIT, Limit, Offset, current_user, urls_for
from lambdas.api.files import redirect_to_object

Ref = Annotated[str | None, Query(max_length=1024)]


def visible_job(ctx: Context, user: User, pk: str, action: Action = Action.READ) -> Job:
    """The job if the user may read it (creator, the algorithm's editors, admins); 404 if
    not, 403 if readable but ``action`` is not the user's."""
    job = ctx.store.jobs.get(pk)
    owner = None if job.creator == user.username else ctx.store.algorithms.find(job.algorithm)
    access.require(
        access.job(user, Action.READ, job, owner),
        access.job(user, action, job, owner),
        f"Job {pk}",
    )
    return job


def build(ctx: Context) -> APIGatewayRouter:
    router = APIGatewayRouter()
    path = "algorithms/jobs/"

    def render(user: User, jobs: list[Job]) -> list[dict]:
        urls = urls_for(ctx, router)
        algorithms = [ctx.store.algorithms.get(pk) for pk in {j.algorithm for j in jobs}]
        sockets = catalog.sockets_of(ctx, algorithms)
        return [shapes.job(j, sockets, urls, with_data=access.job_data(user, j)) for j in jobs]

    @router.get("/algorithms/jobs/", summary="List your jobs")
    def list_jobs(
        algorithm_image__algorithm: Ref = None,
        input_image: Ref = None,
        output_image: Ref = None,
        limit: Limit = DEFAULT_LIMIT,
        offset: Offset = 0,
    ) -> dict:
        user = current_user(router)
        urls = urls_for(ctx, router)
        algorithm = (
            urls.pk_from(algorithm_image__algorithm, "algorithms/")
            if algorithm_image__algorithm
            else None
        )
        query = {
            "algorithm_image__algorithm": algorithm_image__algorithm,
            "input_image": input_image,
            "output_image": output_image,
        }
        image_filter = [
            (urls.pk_from(ref, "cases/images/"), role)
            for ref, role in ((input_image, INPUT), (output_image, OUTPUT))
            if ref
        ]
        if image_filter:
            # Few jobs per image: filter them all, then cut the page.
            image_pk, role = image_filter[0]
            jobs = ctx.store.jobs.for_image(user.username, image_pk, role, algorithm=algorithm)
            for other_pk, other_role in image_filter[1:]:
                keep = {j.pk for j in ctx.store.jobs.for_image(user.username, other_pk, other_role)}
                jobs = [j for j in jobs if j.pk in keep]
            window, count = jobs[offset : offset + limit], len(jobs)
        else:
            window, count = ctx.store.jobs.page_for(
                user.username, offset=offset, limit=limit, algorithm=algorithm
            )
        return shapes.page(render(user, window), count, offset, limit, urls, path, query)

    @router.get("/algorithms/jobs/<pk>/", summary="Get a job")
    def get_job(pk: str) -> dict:
        user = current_user(router)
        return render(user, [visible_job(ctx, user, pk)])[0]

    @router.post("/algorithms/jobs/", summary="Start a job")
    def post_job(body: Annotated[JobCreate, Body()]) -> tuple[dict, int]:
        user = current_user(router)
        job = create_job(ctx, user, body, urls_for(ctx, router), enforce_limits=True)
        sockets = catalog.sockets_of(ctx, [ctx.store.algorithms.get(job.algorithm)])
        return shapes.job_post(job, sockets), 201

    @router.post("/algorithms/jobs/<pk>/cancel/", summary="Cancel a job")
    def cancel(pk: str) -> dict:
        user = current_user(router)
        visible_job(ctx, user, pk, Action.CHANGE)
        return render(user, [cancel_job(ctx, pk, by=user.username)])[0]

    @router.get("/algorithms/jobs/<pk>/values/<value_pk>/<filename>", summary="Download a value")
    def get_value_file(pk: str, value_pk: int, filename: str):
        user = current_user(router)
        job = visible_job(ctx, user, pk)
        if not access.job_data(user, job):
            raise PermissionDenied("Only the job's creator can download its values")
        for value in (*job.inputs, *job.outputs):
            if value.pk == value_pk and value.file and posixpath.basename(value.file) == filename:
                return redirect_to_object(ctx, value.file, filename)
        raise NotFound(f"Value {value_pk} of job {pk} not found")

    return router
