"""Asking for and answering access to an algorithm (see gantry.access_requests).

A request is one item per algorithm and user (``ACCESSREQ#<algorithm pk>``, sort key the
user name), so asking twice keeps one request and the editors list them with one query.
"""

from __future__ import annotations

import json

from gantry import access, timeutil
from gantry.access import Action
from gantry.access_requests import (
    AccessRequest,
    AccessRequestHandling,
    AccessRequestReview,
    AccessRequestStatus,
)
from gantry.algorithms import Algorithm, AlgorithmFields
from gantry.context import Context
from gantry.errors import NotFound, PermissionDenied, ValidationFailed
from gantry.store.table import PK
from gantry.users import User


def _pk(algorithm_pk: str) -> str:
    return f"ACCESSREQ#{algorithm_pk}"


def _load(item: dict) -> AccessRequest:
    return AccessRequest.model_validate(json.loads(item["doc"]))


def _save(ctx: Context, request: AccessRequest) -> AccessRequest:
    ctx.store.table.put(
        ctx.store.table.item(_pk(request.algorithm), request.user, request.model_dump(mode="json"))
    )
    return request


def _find(ctx: Context, algorithm_pk: str, username: str) -> AccessRequest | None:
    item = ctx.store.table.get_item(_pk(algorithm_pk), username)
    return _load(item) if item else None


def _set_user(ctx: Context, algorithm: Algorithm, username: str, *, member: bool) -> None:
    def change(current: Algorithm, used: set[int]) -> AlgorithmFields:
        users = [u for u in current.users if u != username]
        # As an Algorithm: one whose bioimage.io package is still importing has no socket
        # set yet, which AlgorithmFields would refuse.
        return Algorithm.model_validate(
            {**current.model_dump(), "users": [*users, username] if member else users}
        )

    ctx.store.algorithms.update(algorithm.pk, change)


def request_access(ctx: Context, user: User, algorithm_pk: str) -> AccessRequest:
    """Ask to use the algorithm; a pending request is kept, a rejected one is asked again."""
    algorithm = ctx.store.algorithms.get(algorithm_pk)
    if access.algorithm(user, Action.USE, algorithm):
        raise ValidationFailed("You may already use this algorithm", field="algorithm")
    existing = _find(ctx, algorithm.pk, user.username)
    if existing is not None and existing.status is AccessRequestStatus.PENDING:
        return existing
    moment = timeutil.iso()
    accept = algorithm.access_request_handling is AccessRequestHandling.ACCEPT_ALL
    request = AccessRequest(
        algorithm=algorithm.pk,
        user=user.username,
        status=AccessRequestStatus.ACCEPTED if accept else AccessRequestStatus.PENDING,
        created=existing.created if existing else moment,
        modified=moment,
    )
    if accept:
        _set_user(ctx, algorithm, user.username, member=True)
    return _save(ctx, request)


def list_requests(ctx: Context, user: User, algorithm_pk: str) -> list[AccessRequest]:
    """The editors see every request; anyone else only their own."""
    algorithm = ctx.store.algorithms.get(algorithm_pk)
    items = ctx.store.table.query_all(index=None, key_name=PK, key_value=_pk(algorithm.pk))
    requests = [_load(item) for item in items]
    return [r for r in requests if access.access_request(user, Action.READ, r.user, algorithm)]


def review(
    ctx: Context, user: User, algorithm_pk: str, username: str, answer: AccessRequestReview
) -> AccessRequest:
    algorithm = ctx.store.algorithms.get(algorithm_pk)
    request = _find(ctx, algorithm.pk, username)
    readable = request is not None and access.access_request(
        user, Action.READ, request.user, algorithm
    )
    if request is None or not (readable or access.algorithm(user, Action.READ, algorithm)):
        raise NotFound(f"No access request of {username} for algorithm {algorithm_pk}")
    if not access.access_request(user, Action.CHANGE, request.user, algorithm):
        raise PermissionDenied("Only the algorithm's editors answer access requests")
    status = AccessRequestStatus(answer.status)
    _set_user(ctx, algorithm, username, member=status is AccessRequestStatus.ACCEPTED)
    return _save(ctx, request.model_copy(update={"status": status, "modified": timeutil.iso()}))
