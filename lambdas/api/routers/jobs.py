"""algorithms/jobs/: create, list (with grand-challenge's filters), detail, value files."""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from typing import Annotated, Literal

from aws_lambda_powertools.event_handler.openapi.params import Body, Query
from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from gantry import access, shapes, timeutil
from gantry.access import Action
from gantry.context import Context
from gantry.errors import NotFound, PermissionDenied, ValidationFailed
from gantry.job_states import JobStatus
from gantry.jobs import Job
from gantry.services import catalog
from gantry.services.jobs import JobCreate, JobSharing, create_job, share_job
from gantry.store import keys
from gantry.store.jobs import INPUT, OUTPUT
from gantry.store.pagination import ListKey
from gantry.urls import Urls
from gantry.users import User
from lambdas.api.deps import DEFAULT_LIMIT, Limit, Offset, current_user, urls_for
from lambdas.api.files import redirect_to_object

Ref = Annotated[str | None, Query(max_length=1024)]


def visible_job(ctx: Context, user: User, pk: str, action: Action = Action.READ) -> Job:
    """The job if the user may read it (creator, viewers, the algorithm's editors, admins); 404 if
    not, 403 if readable but ``action`` is not the user's."""
    job = ctx.store.jobs.get(pk)
    owner = None if job.creator == user.username else ctx.store.algorithms.find(job.algorithm)
    access.require(
        access.job(user, Action.READ, job, owner),
        access.job(user, action, job, owner),
        f"Job {pk}",
    )
    return job


def _scope(ctx: Context, user: User, algorithm_pk: str | None) -> tuple[ListKey, bool]:
    """Which list a job listing reads, and whether it is a shared one (everyone's jobs):
    an algorithm's editors (and admins) see all of its jobs, admins every job."""
    if algorithm_pk:
        found = ctx.store.algorithms.find(algorithm_pk)
        if found is not None and access.algorithm(user, Action.CHANGE, found):
            return keys.jobs_of_algorithm_all(algorithm_pk), True
        return keys.jobs_of_algorithm(user.username, algorithm_pk), False
    if access.sees_everything(user):
        return keys.ALL_JOBS, True
    return keys.jobs_of(user.username), False


def _filter_pk(urls: Urls, name: str, ref: str, collection: str) -> str:
    """The pk a list filter names; a URL of something else is a 400 naming the filter."""
    try:
        return urls.pk_from(ref, collection)
    except ValueError as error:
        raise ValidationFailed(str(error), field=name) from error


def job_filter(
    status: str | None, created_gte: str | None, created_lt: str | None
) -> Callable[[Job], bool] | None:
    """The filters of a job listing as one test; None when there are none."""
    if status is None and created_gte is None and created_lt is None:
        return None
    wanted = None
    if status is not None:
        try:
            wanted = JobStatus.from_label(status)
        except ValueError as error:
            raise ValidationFailed(
                f"Unknown status '{status}'; use a label such as 'Succeeded'", field="status"
            ) from error
    bounds = []
    for name, text in (("created__gte", created_gte), ("created__lt", created_lt)):
        try:
            bounds.append(timeutil.parse_iso(text) if text else None)
        except ValueError as error:
            raise ValidationFailed(
                f"'{text}' is not an ISO 8601 date and time", field=name
            ) from error
    low, high = bounds

    def keep(job: Job) -> bool:
        created = timeutil.parse_iso(job.created)
        return (
            (wanted is None or job.status is wanted)
            and (low is None or created >= low)
            and (high is None or created < high)
        )

    return keep


def build(ctx: Context) -> APIGatewayRouter:
    router = APIGatewayRouter()
    path = "algorithms/jobs/"

    def render(user: User, jobs: list[Job]) -> list[dict]:
        urls = urls_for(ctx, router)
        algorithms = {pk: ctx.store.algorithms.get(pk) for pk in {j.algorithm for j in jobs}}
        sockets = catalog.sockets_of(ctx, list(algorithms.values()))
        return [
            shapes.job(
                j, sockets, urls, with_data=access.job_data(user, j, algorithms[j.algorithm])
            )
            for j in jobs
        ]

    @router.get(
        "/algorithms/jobs/",
        summary="List jobs: yours; with an algorithm you edit, all of its jobs; admins all",
    )
    def list_jobs(
        algorithm_image__algorithm: Ref = None,
        input_image: Ref = None,
        image: Ref = None,
        output_image: Ref = None,
        status: Annotated[str | None, Query(max_length=64)] = None,
        created__gte: Annotated[str | None, Query(max_length=64)] = None,
        created__lt: Annotated[str | None, Query(max_length=64)] = None,
        ordering: Annotated[Literal["created", "-created"] | None, Query()] = None,
        limit: Limit = DEFAULT_LIMIT,
        offset: Offset = 0,
    ) -> dict:
        user = current_user(router)
        urls = urls_for(ctx, router)
        # gcapi's by_input_image sends ?image=.
        input_image = input_image or image
        algorithm = (
            _filter_pk(
                urls, "algorithm_image__algorithm", algorithm_image__algorithm, "algorithms/"
            )
            if algorithm_image__algorithm
            else None
        )
        query = {
            "algorithm_image__algorithm": algorithm_image__algorithm,
            "input_image": input_image,
            "output_image": output_image,
            "status": status,
            "created__gte": created__gte,
            "created__lt": created__lt,
            "ordering": ordering,
        }
        keep = job_filter(status, created__gte, created__lt)
        image_filter = [
            (_filter_pk(urls, name, ref, "cases/images/"), role)
            for name, ref, role in (
                ("input_image", input_image, INPUT),
                ("output_image", output_image, OUTPUT),
            )
            if ref
        ]
        if image_filter:
            # Few jobs per image (one's own: the data is the creator's): filter them all.
            image_pk, role = image_filter[0]
            jobs = ctx.store.jobs.for_image(user.username, image_pk, role, algorithm=algorithm)
            for other_pk, other_role in image_filter[1:]:
                keep_pks = {
                    j.pk for j in ctx.store.jobs.for_image(user.username, other_pk, other_role)
                }
                jobs = [j for j in jobs if j.pk in keep_pks]
        else:
            list_key, shared = _scope(ctx, user, algorithm)
            if keep is None and ordering != "-created":
                if shared:
                    window, count = ctx.store.jobs.page_shared(list_key, offset=offset, limit=limit)
                else:
                    window, count = ctx.store.jobs.page_list(list_key, offset=offset, limit=limit)
                return shapes.page(render(user, window), count, offset, limit, urls, path, query)
            jobs = ctx.store.jobs.all_of(list_key, shared=shared)
        if keep is not None:
            jobs = [j for j in jobs if keep(j)]
        if ordering == "-created":
            jobs = jobs[::-1]
        window, count = jobs[offset : offset + limit], len(jobs)
        return shapes.page(render(user, window), count, offset, limit, urls, path, query)

    @router.get("/algorithms/jobs/<pk>/", summary="Get a job")
    def get_job(pk: str) -> dict:
        user = current_user(router)
        return render(user, [visible_job(ctx, user, pk)])[0]

    @router.post("/algorithms/jobs/", summary="Start a job")
    def post_job(body: Annotated[JobCreate, Body()]) -> tuple[dict, int]:
        user = current_user(router)
        job = create_job(ctx, user, body, urls_for(ctx, router), enforce_limits=True)
        return shapes.job_post(job), 201

    @router.patch(
        "/algorithms/jobs/<pk>/",
        summary="Share a job's data: viewers, or the algorithm's editors (its creator only)",
    )
    def patch_job(pk: str, body: Annotated[JobSharing, Body()]) -> dict:
        user = current_user(router)
        return render(user, [share_job(ctx, user, visible_job(ctx, user, pk), body)])[0]

    @router.post("/algorithms/jobs/<pk>/cancel/", summary="Cancel a job")
    def cancel(pk: str) -> dict:
        # The pipeline (compute backends, events) loads on the first cancel, not every cold start.
        from gantry.pipeline.cancel import cancel_job

        user = current_user(router)
        visible_job(ctx, user, pk, Action.CHANGE)
        return render(user, [cancel_job(ctx, pk, by=user.username)])[0]

    @router.get("/algorithms/jobs/<pk>/values/<value_pk>/<filename>", summary="Download a value")
    def get_value_file(pk: str, value_pk: int, filename: str):
        user = current_user(router)
        job = visible_job(ctx, user, pk)
        if not access.job_data(user, job, ctx.store.algorithms.find(job.algorithm)):
            raise PermissionDenied(
                "Only the job's creator and those it shares its data with can download its values"
            )
        for value in (*job.inputs, *job.outputs):
            if value.pk == value_pk and value.file and posixpath.basename(value.file) == filename:
                return redirect_to_object(ctx, value.file, filename)
        raise NotFound(f"Value {value_pk} of job {pk} not found")

    return router
