"""algorithms/ and algorithms/images/."""

from __future__ import annotations

from typing import Annotated, Literal

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Body, Query
from aws_lambda_powertools.event_handler.router import APIGatewayRouter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gantry import shapes
from gantry.algorithms import (
    AlgorithmCreate,
    AlgorithmImageFields,
    AlgorithmUpdate,
    Command,
    Entrypoint,
    ImageSha256,
    ImageUri,
    Workdir,
)
from gantry.context import Context
from gantry.errors import NotFound
from gantry.services import bioimageio, catalog
from lambdas.api.deps import DEFAULT_LIMIT, Limit, Offset, current_user, urls_for


class AlgorithmImageCreate(BaseModel):
    """Either ``user_upload`` (a completed upload of an image archive, imported
    asynchronously, as grand-challenge does) or an image registered where it already is."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    algorithm: str = Field(min_length=1, max_length=1024, description="api_url, pk or slug")
    user_upload: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="api_url or pk of a completed upload (docker save archive, .tar[.gz])",
    )
    image: ImageUri | None = None
    entrypoint: Entrypoint | None = None
    command: Command | None = None
    workdir: Workdir | None = None
    sha256: ImageSha256 | None = None
    is_desired_version: bool = True

    @model_validator(mode="after")
    def _one_source(self) -> AlgorithmImageCreate:
        registered = self.model_dump(exclude={"algorithm", "user_upload", "is_desired_version"})
        if self.user_upload is not None:
            given = sorted(name for name, value in registered.items() if value is not None)
            if given:
                raise ValueError(f"user_upload brings its own image: leave out {given}")
            return self
        if self.image is None:
            raise ValueError("user_upload: give the upload of an image archive (or an image)")
        try:
            AlgorithmImageFields(**registered, is_desired_version=self.is_desired_version)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"{where}: {first['msg']}" if where else first["msg"]) from None
        return self


class AlgorithmImageUpdate(BaseModel):
    """grand-challenge's activation: ``{"is_desired_version": true}`` makes a completed image
    the one the algorithm's next jobs run (the others stop being desired)."""

    model_config = ConfigDict(extra="forbid")

    is_desired_version: Literal[True] = Field(
        description="true: make this image the desired version"
    )


class _Empty(BaseModel):
    pass


def build(ctx: Context) -> APIGatewayRouter:
    router = APIGatewayRouter()

    @router.get("/algorithms/", summary="List the algorithms you can use")
    def list_algorithms(
        slug: Annotated[str | None, Query(max_length=255)] = None,
        limit: Limit = DEFAULT_LIMIT,
        offset: Offset = 0,
    ) -> dict:
        user = current_user(router)
        urls = urls_for(ctx, router)
        if slug is not None:
            try:
                algorithms = [catalog.visible_algorithm(ctx, user, slug, by_slug=True)]
            except NotFound:
                algorithms = []
            count = len(algorithms)
        else:
            algorithms, count = catalog.algorithms_page(ctx, user, offset=offset, limit=limit)
        sockets = catalog.sockets_of(ctx, algorithms)
        results = [shapes.algorithm(a, sockets, urls) for a in algorithms]
        return shapes.page(results, count, offset, limit, urls, "algorithms/", {"slug": slug})

    @router.get("/algorithms/<pk>/", summary="Get an algorithm")
    def get_algorithm(pk: str) -> dict:
        user = current_user(router)
        algorithm = catalog.visible_algorithm(ctx, user, pk)
        sockets = catalog.sockets_of(ctx, [algorithm])
        return shapes.algorithm(algorithm, sockets, urls_for(ctx, router))

    @router.post("/algorithms/", summary="Create an algorithm")
    def create_algorithm(body: Annotated[AlgorithmCreate, Body()]) -> tuple[dict, int]:
        user = current_user(router)
        if body.bioimageio_package is not None:
            # Created at once; its import (in the import function) adds sockets and image.
            algorithm = bioimageio.register(ctx, user, body, urls_for(ctx, router))
        else:
            algorithm = catalog.create_algorithm(ctx, user, body)
        sockets = catalog.sockets_of(ctx, [algorithm])
        return shapes.algorithm(algorithm, sockets, urls_for(ctx, router)), 201

    @router.patch("/algorithms/<pk>/", summary="Change an algorithm (its editors)")
    def update_algorithm(pk: str, body: Annotated[AlgorithmUpdate, Body()]) -> dict:
        user = current_user(router)
        algorithm = catalog.update_algorithm(ctx, user, pk, body)
        sockets = catalog.sockets_of(ctx, [algorithm])
        return shapes.algorithm(algorithm, sockets, urls_for(ctx, router))

    @router.get("/algorithms/images/", summary="List container images of your algorithms")
    def list_algorithm_images(
        algorithm: Annotated[str | None, Query(max_length=1024)] = None,
        limit: Limit = DEFAULT_LIMIT,
        offset: Offset = 0,
    ) -> dict:
        user = current_user(router)
        urls = urls_for(ctx, router)
        images = catalog.images_of(ctx, user, catalog.listed_algorithms(ctx, user, urls, algorithm))
        window = images[offset : offset + limit]
        results = [shapes.algorithm_image(image, urls) for image in window]
        query = {"algorithm": algorithm}
        return shapes.page(results, len(images), offset, limit, urls, "algorithms/images/", query)

    @router.get("/algorithms/images/<pk>/", summary="Get a container image")
    def get_algorithm_image(pk: str) -> dict:
        user = current_user(router)
        image = catalog.visible_algorithm_image(ctx, user, pk)
        return shapes.algorithm_image(image, urls_for(ctx, router))

    @router.patch("/algorithms/images/<pk>/", summary="Make a container image the desired version")
    def update_algorithm_image(pk: str, body: Annotated[AlgorithmImageUpdate, Body()]) -> dict:
        user = current_user(router)
        image = catalog.activate_algorithm_image(ctx, user, pk)
        return shapes.algorithm_image(image, urls_for(ctx, router))

    @router.post("/algorithms/images/<pk>/cancel/", summary="Cancel a container image's import")
    def cancel_algorithm_image_import(pk: str) -> dict:
        user = current_user(router)
        image = catalog.cancel_image_import(ctx, user, pk)
        return shapes.algorithm_image(image, urls_for(ctx, router))

    @router.delete(
        "/algorithms/images/<pk>/", summary="Remove a container image (and from the registry)"
    )
    def delete_algorithm_image(pk: str):
        user = current_user(router)
        catalog.delete_algorithm_image(ctx, user, pk)
        return Response(status_code=204, content_type="application/json", body="")

    @router.post("/algorithms/images/", summary="Add a container image to an algorithm")
    def create_algorithm_image(body: Annotated[AlgorithmImageCreate, Body()]) -> tuple[dict, int]:
        user = current_user(router)
        urls = urls_for(ctx, router)
        algorithm = catalog.referenced_algorithm(ctx, user, urls, body.algorithm)
        if body.user_upload is not None:
            image = catalog.import_algorithm_image(ctx, user, algorithm, body.user_upload, urls)
        else:
            fields = AlgorithmImageFields(**body.model_dump(exclude={"algorithm", "user_upload"}))
            image = catalog.create_algorithm_image(ctx, user, algorithm.pk, fields)
        return shapes.algorithm_image(image, urls), 201

    return router
