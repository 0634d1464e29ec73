"""Interfaces, algorithms and algorithm images: creation rules that span several stores."""

from __future__ import annotations

from collections.abc import Callable

from gantry import access
from gantry.access import Action
from gantry.algorithms import (
    Algorithm,
    AlgorithmFields,
    AlgorithmImage,
    AlgorithmImageFields,
    AlgorithmUpdate,
    SocketSet,
)
from gantry.context import Context
from gantry.errors import NotFound, PermissionDenied, ValidationFailed
from gantry.interfaces import ImmutableFieldError, Interface, InterfaceFields
from gantry.uploads import Upload
from gantry.urls import Urls
from gantry.users import User


def sockets_of(ctx: Context, algorithms: list[Algorithm]) -> dict[str, Interface]:
    slugs = {slug for a in algorithms for s in a.interfaces for slug in (*s.inputs, *s.outputs)}
    return ctx.store.sockets.get_many_by_slug(sorted(slugs))


def _check_socket_sets(ctx: Context, socket_sets: list[SocketSet]) -> dict[str, Interface]:
    """Every socket exists, and no two inputs (or outputs) of a set share a relative path."""
    slugs = sorted({slug for s in socket_sets for slug in (*s.inputs, *s.outputs)})
    found = ctx.store.sockets.get_many_by_slug(slugs)
    missing = [slug for slug in slugs if slug not in found]
    if missing:
        raise ValidationFailed(
            f"Unknown interface(s): {', '.join(missing)}; create them first", field="interfaces"
        )
    for index, socket_set in enumerate(socket_sets):
        for role, members in (("inputs", socket_set.inputs), ("outputs", socket_set.outputs)):
            paths: dict[str, str] = {}
            for slug in members:
                path = found[slug].relative_path
                if path in paths:
                    raise ValidationFailed(
                        f"interfaces[{index}].{role}: '{slug}' and '{paths[path]}' both use "
                        f"the relative path '{path}'",
                        field="interfaces",
                    )
                paths[path] = slug
    return found


def create_algorithm(ctx: Context, user: User, fields: AlgorithmFields) -> Algorithm:
    if not fields.interfaces:
        raise ValidationFailed(
            "give at least one socket set (or a bioimageio_package)", field="interfaces"
        )
    found = _check_socket_sets(ctx, fields.interfaces)
    algorithm = ctx.store.algorithms.create(fields, creator=user.username)
    ctx.store.sockets.mark_used(list(found.values()), flag="in_algorithm")
    return algorithm


def update_algorithm(ctx: Context, user: User, pk: str, patch: AlgorithmUpdate) -> Algorithm:
    """An editor's (or admin's) change. Jobs refer to their socket set by position, so every
    set a job used stays where it is; others may go, and new ones come after."""
    algorithm = visible_algorithm(ctx, user, pk)
    if not access.algorithm(user, Action.CHANGE, algorithm):
        raise PermissionDenied("Only the algorithm's editors can change it")
    given = patch.model_dump(exclude_unset=True)
    if algorithm.bioimageio is not None:
        # The package's tensors are the socket sets; they exist once its import completed.
        if "interfaces" in given:
            raise ValidationFailed(
                "A bioimage.io model algorithm's inputs and outputs come from its package",
                field="interfaces",
            )
        if not algorithm.interfaces:
            status = algorithm.bioimageio.import_status.value
            raise ValidationFailed(
                f"The algorithm's bioimage.io package import is {status}: it can be changed "
                "once the import has completed",
                field="bioimageio_package",
            )
    found = _check_socket_sets(ctx, patch.interfaces) if patch.interfaces is not None else {}

    def change(current: Algorithm, used: set[int]) -> AlgorithmFields:
        merged = {**current.model_dump(include=set(AlgorithmFields.model_fields)), **given}
        fields = AlgorithmFields.model_validate(merged)
        for index in sorted(used):
            old = current.interfaces[index]
            new = fields.interfaces[index] if index < len(fields.interfaces) else None
            if new != old:
                raise ValidationFailed(
                    f"interfaces[{index}] ({', '.join(old.inputs)} -> "
                    f"{', '.join(old.outputs)}) cannot be removed or changed: jobs used it",
                    field="interfaces",
                )
        return fields

    updated = ctx.store.algorithms.update(algorithm.pk, change)
    if found:
        ctx.store.sockets.mark_used(list(found.values()), flag="in_algorithm")
    return updated


def update_interface(ctx: Context, user: User, pk: int, fields: InterfaceFields) -> Interface:
    """Only the interface's creator (or an admin) changes it, within check_update's rules."""
    interface = ctx.store.sockets.get(pk)
    creator = ctx.store.sockets.creator_of(pk)
    if not access.interface(user, Action.CHANGE, interface, creator=creator):
        raise PermissionDenied("Only the interface's creator or an admin can change it")
    try:
        return ctx.store.sockets.update(pk, fields)
    except ImmutableFieldError as error:
        raise ValidationFailed(str(error), field=error.field) from error


def algorithms_page(
    ctx: Context, user: User, *, offset: int, limit: int
) -> tuple[list[Algorithm], int]:
    """The algorithms a user may use: an admin's list holds every algorithm."""
    if access.sees_everything(user):
        return ctx.store.algorithms.page_all(offset=offset, limit=limit)
    return ctx.store.algorithms.page_for(user.username, offset=offset, limit=limit)


def visible_algorithm(
    ctx: Context, user: User, pk_or_slug: str, *, by_slug: bool = False
) -> Algorithm:
    """The algorithm if the user may use it; others' algorithms are "not found"."""
    algorithm = (
        ctx.store.algorithms.get_by_slug(pk_or_slug)
        if by_slug
        else ctx.store.algorithms.get(pk_or_slug)
    )
    if not access.algorithm(user, Action.READ, algorithm):
        raise NotFound(f"Algorithm {pk_or_slug} not found")
    return algorithm


def referenced_algorithm(ctx: Context, user: User, urls: Urls, reference: str) -> Algorithm:
    """The algorithm a request names by api_url, pk or slug, if the user may use it.

    ValidationFailed (field ``algorithm``) for a URL of something else; NotFound otherwise."""
    try:
        pk = urls.pk_from(reference, "algorithms/")
    except ValueError as error:
        raise ValidationFailed(str(error), field="algorithm") from error
    try:
        return visible_algorithm(ctx, user, pk)
    except NotFound:
        return visible_algorithm(ctx, user, pk, by_slug=True)


def listed_algorithms(
    ctx: Context, user: User, urls: Urls, reference: str | None
) -> list[Algorithm]:
    """The algorithms a list of images or models covers: the one its ``algorithm`` filter
    names (api_url, pk or slug; errors as ``referenced_algorithm``), else every algorithm the
    user may use."""
    from gantry.store.pagination import MAX_LIMIT

    if reference is None:
        return algorithms_page(ctx, user, offset=0, limit=MAX_LIMIT)[0]
    return [referenced_algorithm(ctx, user, urls, reference)]


def images_of(ctx: Context, user: User, algorithms: list[Algorithm]) -> list[AlgorithmImage]:
    """The images of ``algorithms`` the user may see, oldest first."""
    found = [
        image
        for algorithm in algorithms
        for image in ctx.store.algorithms.images_of(algorithm.pk)
        if access.algorithm_image(user, Action.READ, image, algorithm)
    ]
    found.sort(key=lambda image: (image.created, image.pk))
    return found


def create_algorithm_image(
    ctx: Context, user: User, algorithm_pk: str, fields: AlgorithmImageFields
) -> AlgorithmImage:
    algorithm = visible_algorithm(ctx, user, algorithm_pk)
    if not access.algorithm(user, Action.CHANGE, algorithm):
        raise PermissionDenied("Only the algorithm's editors can add container images")
    from gantry.pipeline.image_import import repository_of_algorithm
    from gantry.pipeline.registry_publisher import (
        IMAGE_TAG_PREFIX,
        in_repository,
        repository_named,
    )

    # The repository holds every algorithm's imported images, tagged image-<pk> with pks that
    # jobs name (locally: one repository per algorithm): a reference to one would run another
    # algorithm's image without being its editor. Operators push images by hand to the same
    # repository under tags of their own (docs/deploy.md); those stay registrable, by digest
    # only by admins (an imported image's digest names it as well as its tag).
    named = repository_named(fields.image)
    name = fields.image.partition("@")[0]
    tag = name.rpartition("/")[2].partition(":")[2]
    imported = tag.startswith(IMAGE_TAG_PREFIX) or ("@" in fields.image and not user.is_admin)
    if (in_repository(ctx.settings, fields.image) and imported) or (
        named.startswith(repository_of_algorithm(""))
        and named != repository_of_algorithm(algorithm.pk)
    ):
        raise ValidationFailed(
            "Images of this deployment's repository are added by uploading them "
            "(user_upload), not by reference",
            field="image",
        )
    return ctx.store.algorithms.create_image(algorithm, fields, creator=user.username)


IMAGE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz")


def import_algorithm_image(
    ctx: Context, user: User, algorithm: Algorithm, upload_ref: str, urls: Urls
) -> AlgorithmImage:
    """Queue the import of an upload of the user's as a new image of the algorithm (its
    editors only); the upload handler checks and stores it (gantry.pipeline.image_import)."""
    from gantry.algorithms import ImportStatus
    from gantry.pipeline.image_import import size_problem
    from gantry.pipeline.imports import queue_import
    from gantry.pipeline.wiring import import_image_message

    if not access.algorithm(user, Action.CHANGE, algorithm):
        raise PermissionDenied("Only the algorithm's editors can add container images")
    upload = upload_to_import(
        ctx,
        user,
        upload_ref,
        urls,
        kind="container image archive",
        suffixes=IMAGE_SUFFIXES,
        how="docker save IMAGE | gzip > image.tar.gz",
        size_problem=size_problem,
    )
    image = ctx.store.algorithms.create_image(
        algorithm,
        None,
        creator=user.username,
        image="upload",
        user_upload=upload.pk,
        import_status=ImportStatus.QUEUED,
        is_desired_version=False,
    )
    queue_import(ctx, import_image_message(image.pk))
    return image


def upload_to_import(
    ctx: Context,
    user: User,
    upload_ref: str,
    urls: Urls,
    *,
    kind: str,
    suffixes: tuple[str, ...],
    how: str,
    size_problem: Callable[[int | None], str | None],
) -> Upload:
    """The completed upload of the user's that an import of a ``kind`` reads. Refused with a
    400 naming ``user_upload`` unless its name ends in one of ``suffixes`` (the message says
    ``how`` to make one) and ``size_problem`` finds none with its size."""
    upload = _completed_upload(ctx, user, upload_ref, urls)
    if not upload.filename.lower().endswith(suffixes):
        raise ValidationFailed(
            f"'{upload.filename}' is not a {kind} ({', '.join(suffixes)}; {how})",
            field="user_upload",
        )
    problem = size_problem(upload.size)
    if problem:
        raise ValidationFailed(problem, field="user_upload")
    return upload


def _completed_upload(ctx: Context, user: User, upload_ref: str, urls: Urls) -> Upload:
    from gantry.uploads import UploadStatus

    try:
        upload = ctx.store.uploads.get(urls.pk_from(upload_ref, "uploads/"))
    except (ValueError, NotFound) as error:
        raise ValidationFailed(f"upload '{upload_ref}' not found", field="user_upload") from error
    if not access.upload(user, Action.USE, upload):
        raise ValidationFailed(f"upload '{upload_ref}' not found", field="user_upload")
    if upload.status is not UploadStatus.COMPLETED:
        raise ValidationFailed(f"upload '{upload.filename}' is not completed", field="user_upload")
    return upload


def visible_algorithm_image(ctx: Context, user: User, pk: str) -> AlgorithmImage:
    image = ctx.store.algorithms.get_image(pk)
    try:
        algorithm = visible_algorithm(ctx, user, image.algorithm)
    except NotFound as error:
        raise NotFound(f"Algorithm image {pk} not found") from error
    if not access.algorithm_image(user, Action.READ, image, algorithm):
        raise NotFound(f"Algorithm image {pk} not found")
    return image


def _editable_image(ctx: Context, user: User, pk: str, what: str) -> AlgorithmImage:
    """The image if the user may change it: 404 unless readable, 403 unless an editor's."""
    image = visible_algorithm_image(ctx, user, pk)
    algorithm = ctx.store.algorithms.get(image.algorithm)
    if not access.algorithm_image(user, Action.CHANGE, image, algorithm):
        raise PermissionDenied(f"Only the algorithm's editors can {what}")
    return image


def activate_algorithm_image(ctx: Context, user: User, pk: str) -> AlgorithmImage:
    """Make a completed image the desired version: the algorithm's next jobs run it."""
    from gantry.algorithms import ImportStatus

    image = _editable_image(ctx, user, pk, "choose the desired image")
    if image.import_status is not ImportStatus.COMPLETED:
        raise ValidationFailed(
            f"The image's import is {image.import_status.value}: only an image whose import "
            "completed can be the desired version",
            field="is_desired_version",
        )

    def desire(current: AlgorithmImage) -> AlgorithmImage:
        return current.model_copy(update={"is_desired_version": True})

    return ctx.store.algorithms.update_image(pk, desire)


def cancel_image_import(ctx: Context, user: User, pk: str) -> AlgorithmImage:
    """Stop an import that has not ended; a handler in the middle of it stops at its next
    step, and what it pushed is deleted again (gantry.pipeline.image_import)."""
    from gantry.algorithms import ImportStatus

    image = _editable_image(ctx, user, pk, "cancel an image import")
    if image.import_status.is_finished:
        raise ValidationFailed(
            f"The image's import has ended ({image.import_status.value}): nothing to cancel",
            field="import_status",
        )

    def cancel(current: AlgorithmImage) -> AlgorithmImage:
        if current.import_status.is_finished:
            return current
        return current.model_copy(
            update={
                "import_status": ImportStatus.CANCELLED,
                "status_message": f"Cancelled by {user.username}",
            }
        )

    cancelled = ctx.store.algorithms.update_image(pk, cancel)
    if cancelled.import_status is not ImportStatus.CANCELLED:
        raise ValidationFailed(
            f"The image's import has ended ({cancelled.import_status.value}): nothing to cancel",
            field="import_status",
        )
    return cancelled


def delete_algorithm_image(ctx: Context, user: User, pk: str) -> None:
    """Remove an image and delete it from the registry. The desired version stays until
    another image is activated, and an import still running is cancelled first: jobs
    always have the image they were told they run."""
    from gantry.pipeline.image_import import remove_from_registry

    image = _editable_image(ctx, user, pk, "remove container images")
    if image.is_desired_version:
        raise ValidationFailed(
            "This image is the algorithm's desired version: activate another image before "
            "removing it",
            field="is_desired_version",
        )
    if image.user_upload is not None and not image.import_status.is_finished:
        raise ValidationFailed(
            f"The image's import is {image.import_status.value}: cancel it before removing it",
            field="import_status",
        )
    remove_from_registry(ctx, image)
    ctx.store.algorithms.delete_image(image)
