"""algorithms/<pk>/archive-runs/: run an algorithm over an archive, one job per item."""

from __future__ import annotations

from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Body
from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from gantry import shapes
from gantry.context import Context
from gantry.services import archive_runs, catalog
from gantry.services.archive_runs import ArchiveRunCreate
from lambdas.api.deps import DEFAULT_LIMIT, Limit, Offset, current_user, urls_for


def build(ctx: Context) -> APIGatewayRouter:
    router = APIGatewayRouter()

    @router.post(
        "/algorithms/<pk>/archive-runs/",
        summary="Run the algorithm on every item of an archive (or some), a job per item",
    )
    def start(pk: str, body: Annotated[ArchiveRunCreate, Body()]) -> tuple[dict, int]:
        user = current_user(router)
        urls = urls_for(ctx, router)
        run = archive_runs.start_run(ctx, user, pk, body, urls)
        return shapes.archive_run(run, archive_runs.progress(ctx, run), urls), 201

    @router.get("/algorithms/<pk>/archive-runs/", summary="List your runs of the algorithm")
    def list_runs(pk: str, limit: Limit = DEFAULT_LIMIT, offset: Offset = 0) -> dict:
        user = current_user(router)
        urls = urls_for(ctx, router)
        algorithm = catalog.referenced_algorithm(ctx, user, urls, pk)
        runs, count = ctx.store.archive_runs.page_for(
            user.username, algorithm.pk, offset=offset, limit=limit
        )
        results = [shapes.archive_run(r, archive_runs.progress(ctx, r), urls) for r in runs]
        path = f"algorithms/{algorithm.pk}/archive-runs/"
        return shapes.page(results, count, offset, limit, urls, path, {})

    @router.get(
        "/algorithms/<pk>/archive-runs/<run_pk>/",
        summary="A run over an archive and its progress (jobs per status)",
    )
    def get_run(pk: str, run_pk: str) -> dict:
        user = current_user(router)
        urls = urls_for(ctx, router)
        algorithm = catalog.referenced_algorithm(ctx, user, urls, pk)
        run = archive_runs.visible_run(ctx, user, algorithm.pk, run_pk)
        return shapes.archive_run(run, archive_runs.progress(ctx, run), urls)

    @router.post(
        "/algorithms/<pk>/archive-runs/<run_pk>/cancel/",
        summary="Cancel a run: no new jobs, its unfinished jobs cancelled (its creator)",
    )
    def cancel_run(pk: str, run_pk: str) -> dict:
        user = current_user(router)
        urls = urls_for(ctx, router)
        algorithm = catalog.referenced_algorithm(ctx, user, urls, pk)
        run = archive_runs.cancel_run(ctx, user, algorithm.pk, run_pk)
        return shapes.archive_run(run, archive_runs.progress(ctx, run), urls)

    return router
