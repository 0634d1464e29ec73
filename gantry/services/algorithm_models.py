"""Model tarballs of algorithms: queue an import, list them, pick the desired one.

Editors (and admins) only, as grand-challenge: an algorithm's users run its desired model
through jobs and never see the models themselves.
"""

from __future__ import annotations

import uuid

from gantry import access, timeutil
from gantry.access import Action
from gantry.algorithms import MODEL_SUFFIXES, Algorithm, AlgorithmModel, ImportStatus
from gantry.context import Context
from gantry.errors import NotFound, PermissionDenied, ValidationFailed
from gantry.services import catalog
from gantry.urls import Urls
from gantry.users import User

EDITORS_ONLY = "Only the algorithm's editors can add or change its models"


def queue_import(
    ctx: Context, user: User, algorithm: Algorithm, upload_ref: str, urls: Urls, comment: str = ""
) -> AlgorithmModel:
    """A new model of ``algorithm`` from a completed upload of the user's, Queued for the
    import function (gantry.pipeline.model_import)."""
    from gantry.pipeline.imports import queue_import
    from gantry.pipeline.model_import import size_problem
    from gantry.pipeline.wiring import import_model_message

    if not access.algorithm(user, Action.CHANGE, algorithm):
        raise PermissionDenied(EDITORS_ONLY)
    upload = catalog.upload_to_import(
        ctx,
        user,
        upload_ref,
        urls,
        kind="model tarball",
        suffixes=MODEL_SUFFIXES,
        how="tar -czf model.tar.gz -C MODEL_FOLDER .",
        size_problem=size_problem,
    )
    model = ctx.store.models.create(
        AlgorithmModel(
            pk=str(uuid.uuid4()),
            algorithm=algorithm.pk,
            creator=user.username,
            created=timeutil.iso(),
            user_upload=upload.pk,
            comment=comment,
        )
    )
    queue_import(ctx, import_model_message(model.pk))
    return model


def visible_model(ctx: Context, user: User, pk: str) -> tuple[AlgorithmModel, Algorithm]:
    """The model and its algorithm, if the user may see the model; else "not found"."""
    try:
        model = ctx.store.models.get(pk)
        algorithm = ctx.store.algorithms.get(model.algorithm)
    except NotFound as error:
        raise NotFound(f"Algorithm model {pk} not found") from error
    if not access.algorithm_model(user, Action.READ, model, algorithm):
        raise NotFound(f"Algorithm model {pk} not found")
    return model, algorithm


def models_of(ctx: Context, user: User, algorithms: list[Algorithm]) -> list[AlgorithmModel]:
    """The models of ``algorithms`` the user may see, oldest first."""
    found = [
        model
        for algorithm in algorithms
        for model in ctx.store.models.models_of(algorithm.pk)
        if access.algorithm_model(user, Action.READ, model, algorithm)
    ]
    found.sort(key=lambda model: (model.created, model.pk))
    return found


def desired_pks(ctx: Context, algorithm_pks: set[str]) -> set[str]:
    """The pks of these algorithms' desired models."""
    desired = (ctx.store.models.desired(pk) for pk in sorted(algorithm_pks))
    return {d.pk for d in desired if d is not None}


def delete_model(ctx: Context, user: User, pk: str) -> None:
    """Remove a model and its tarball (editors). Not the desired model (activate another or
    deactivate it first) and not one still importing: the next jobs always get the model
    they were told. A job created with it that has not started yet fails to start."""
    from gantry.pipeline.model_import import delete_tarball

    model, algorithm = visible_model(ctx, user, pk)
    if not access.algorithm_model(user, Action.CHANGE, model, algorithm):
        raise PermissionDenied(EDITORS_ONLY)
    if pk in desired_pks(ctx, {algorithm.pk}):
        raise ValidationFailed(
            "This model is the algorithm's desired model: activate another or deactivate it "
            "before removing it",
            field="is_desired_version",
        )
    if not model.import_status.is_finished:
        raise ValidationFailed(
            f"The model's import is {model.import_status.value}: wait for it to end before "
            "removing the model",
            field="import_status",
        )
    ctx.store.models.delete(model)
    if model.key:
        delete_tarball(ctx, model.key)


def change_model(
    ctx: Context,
    user: User,
    pk: str,
    *,
    is_desired_version: bool | None = None,
    comment: str | None = None,
) -> AlgorithmModel:
    """Activate (``is_desired_version=True``: the algorithm's next jobs use it) or deactivate
    a model (no model for the next jobs), and change its comment."""
    model, algorithm = visible_model(ctx, user, pk)
    if not access.algorithm_model(user, Action.CHANGE, model, algorithm):
        raise PermissionDenied(EDITORS_ONLY)
    if comment is not None:
        model = ctx.store.models.update(pk, lambda m: m.model_copy(update={"comment": comment}))
    if is_desired_version is True:
        if model.import_status is not ImportStatus.COMPLETED:
            raise ValidationFailed(
                f"Model {pk} cannot be activated: its import is {model.import_status.value}",
                field="is_desired_version",
            )
        ctx.store.models.make_desired(model)
    elif is_desired_version is False:
        ctx.store.models.clear_desired(algorithm.pk, pk)
    return model
