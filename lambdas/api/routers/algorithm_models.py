"""algorithms/models/: model tarballs of an algorithm, extracted to /opt/ml/model for its jobs."""

from __future__ import annotations

from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Body, Query
from aws_lambda_powertools.event_handler.router import APIGatewayRouter
from pydantic import BaseModel, ConfigDict, Field

from gantry import shapes
from gantry.algorithms import AlgorithmModel
from gantry.context import Context
from gantry.errors import NotFound, ValidationFailed
from gantry.services import algorithm_models, catalog
from gantry.urls import Urls
from lambdas.api.deps import DEFAULT_LIMIT, Limit, Offset, current_user, urls_for

UPLOAD_HELP = "api_url or pk of a completed upload of a model tarball (.tar.gz)"


class AlgorithmModelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    algorithm: str = Field(min_length=1, max_length=1024, description="api_url, pk or slug")
    user_upload: str = Field(min_length=1, max_length=1024, description=UPLOAD_HELP)
    comment: str = Field(default="", max_length=10_000)


class AlgorithmModelUpload(BaseModel):
    """The body of ``algorithms/<pk>/models/``: the algorithm is in the path."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    user_upload: str = Field(min_length=1, max_length=1024, description=UPLOAD_HELP)
    comment: str = Field(default="", max_length=10_000)


class AlgorithmModelChange(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    is_desired_version: bool | None = Field(
        default=None,
        description="true: the algorithm's next jobs use this model; false: no model",
    )
    comment: str | None = Field(default=None, max_length=10_000)


def build(ctx: Context) -> APIGatewayRouter:
    router = APIGatewayRouter()

    def shaped(model: AlgorithmModel, urls: Urls) -> dict:
        desired = algorithm_models.desired_pks(ctx, {model.algorithm})
        return shapes.algorithm_model(model, urls, desired=model.pk in desired)

    def queued(algorithm_ref: str, user_upload: str, comment: str, *, in_body: bool) -> dict:
        """Both ways to add a model: queue the import of the upload into that algorithm."""
        user = current_user(router)
        urls = urls_for(ctx, router)
        try:
            algorithm = catalog.referenced_algorithm(ctx, user, urls, algorithm_ref)
        except NotFound as error:
            if not in_body:
                raise
            # A field of the body names it: a 400 naming the field, as for jobs.
            raise ValidationFailed(
                f"Algorithm '{algorithm_ref}' not found", field="algorithm"
            ) from error
        model = algorithm_models.queue_import(ctx, user, algorithm, user_upload, urls, comment)
        return shaped(model, urls)

    @router.get("/algorithms/models/", summary="List model tarballs of your algorithms")
    def list_algorithm_models(
        algorithm: Annotated[str | None, Query(max_length=1024)] = None,
        limit: Limit = DEFAULT_LIMIT,
        offset: Offset = 0,
    ) -> dict:
        user = current_user(router)
        urls = urls_for(ctx, router)
        algorithms = catalog.listed_algorithms(ctx, user, urls, algorithm)
        models = algorithm_models.models_of(ctx, user, algorithms)
        window = models[offset : offset + limit]
        desired = algorithm_models.desired_pks(ctx, {m.algorithm for m in window})
        results = [shapes.algorithm_model(m, urls, desired=m.pk in desired) for m in window]
        query = {"algorithm": algorithm}
        return shapes.page(results, len(models), offset, limit, urls, "algorithms/models/", query)

    @router.get("/algorithms/models/<pk>/", summary="Get a model tarball and its import status")
    def get_algorithm_model(pk: str) -> dict:
        user = current_user(router)
        model, _ = algorithm_models.visible_model(ctx, user, pk)
        return shaped(model, urls_for(ctx, router))

    @router.post(
        "/algorithms/models/",
        summary="Add a model tarball from a completed upload; imported asynchronously",
    )
    def create_algorithm_model(body: Annotated[AlgorithmModelCreate, Body()]) -> tuple[dict, int]:
        return queued(body.algorithm, body.user_upload, body.comment, in_body=True), 201

    @router.post(
        "/algorithms/<pk>/models/",
        summary="Add a model tarball to this algorithm (as POST algorithms/models/)",
    )
    def add_algorithm_model(
        pk: str, body: Annotated[AlgorithmModelUpload, Body()]
    ) -> tuple[dict, int]:
        return queued(pk, body.user_upload, body.comment, in_body=False), 201

    @router.patch(
        "/algorithms/models/<pk>/",
        summary="Activate or deactivate a model (its algorithm's editors), or change its comment",
    )
    def change_algorithm_model(pk: str, body: Annotated[AlgorithmModelChange, Body()]) -> dict:
        user = current_user(router)
        model = algorithm_models.change_model(
            ctx, user, pk, is_desired_version=body.is_desired_version, comment=body.comment
        )
        return shaped(model, urls_for(ctx, router))

    @router.delete(
        "/algorithms/models/<pk>/",
        summary="Remove a model and its tarball (not the desired one, not while importing)",
    )
    def delete_algorithm_model(pk: str) -> tuple[None, int]:
        algorithm_models.delete_model(ctx, current_user(router), pk)
        return None, 204

    return router
