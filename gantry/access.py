"""Who may do what: the one access policy that routers, services and handlers ask.

Four actions on every entity: READ (see it), USE (run or reference it: an algorithm in a job,
an upload or image as a job's input), CHANGE and DELETE. Admins may do everything.

- Interfaces are shared: anyone may read and use them; the creator changes and deletes.
- Algorithms: members (creator, editors, users) read and use; creator and editors change.
- Algorithm images and models: the algorithm's editors only (users run the desired ones
  through jobs).
- Jobs: the creator reads, changes (cancels) and deletes; the algorithm's editors read and
  cancel (CHANGE) too. A job's data (its input and output values, files and images) is its
  creator's: editors see status, durations, errors and logs, not the data, until the creator
  shares it (grand-challenge's job viewers): with named users (``viewers``, who then read the
  job and its data) or with the algorithm's editors (``share_with_editors``). Only the creator
  (and admins) share.
- Images, uploads, upload sessions and tokens belong to their owner alone; an image in an
  archive is also read and used by the archive's members, and an image is readable by whoever
  may see the data of a job that used or produced it.
- Archives: members (creator, editors, uploaders, users) read and use them (see their items
  and images, run algorithms over them); editors change the archive (title, members);
  editors and uploaders add items and values (archive_item CHANGE). A run of an algorithm
  over an archive is its creator's.
- Access requests: anyone may ask to use an algorithm they know the pk of; the requester
  reads their own request; the algorithm's editors read and answer (CHANGE) all of them.

What a caller may not read is "not found" (404), never "forbidden": it must not learn that
the thing exists. What it may read but not change is 403.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from gantry.algorithms import Algorithm, AlgorithmImage, AlgorithmModel
from gantry.archives import Archive
from gantry.errors import NotFound, PermissionDenied
from gantry.images import Image
from gantry.interfaces import Interface
from gantry.jobs import Job
from gantry.uploads import Upload
from gantry.users import User


class Action(StrEnum):
    READ = "read"
    USE = "use"
    CHANGE = "change"
    DELETE = "delete"


def is_member(user: User, algorithm: Algorithm) -> bool:
    name = user.username
    return name == algorithm.creator or name in algorithm.editors or name in algorithm.users


def is_editor(user: User, algorithm: Algorithm) -> bool:
    return user.username == algorithm.creator or user.username in algorithm.editors


def sees_everything(user: User) -> bool:
    """Lists hold everyone's entities for this user (admins), not only the user's own."""
    return user.is_admin


def interface(user: User, action: Action, item: Interface, *, creator: str | None) -> bool:
    if user.is_admin or action in (Action.READ, Action.USE):
        return True
    return creator is not None and creator == user.username


def algorithm(user: User, action: Action, item: Algorithm) -> bool:
    if user.is_admin:
        return True
    if action in (Action.READ, Action.USE):
        return is_member(user, item)
    return is_editor(user, item)


def algorithm_image(user: User, action: Action, item: AlgorithmImage, owner: Algorithm) -> bool:
    if owner.pk != item.algorithm:
        raise ValueError(f"algorithm {owner.pk} is not the one of image {item.pk}")
    return user.is_admin or is_editor(user, owner)


def algorithm_model(user: User, action: Action, item: AlgorithmModel, owner: Algorithm) -> bool:
    if owner.pk != item.algorithm:
        raise ValueError(f"algorithm {owner.pk} is not the one of model {item.pk}")
    return user.is_admin or is_editor(user, owner)


def _edits_owner(user: User, item: Job, owner: Algorithm | None) -> bool:
    return owner is not None and owner.pk == item.algorithm and is_editor(user, owner)


def job(user: User, action: Action, item: Job, owner: Algorithm | None = None) -> bool:
    """``owner`` (the job's algorithm) lets its editors read and cancel the job."""
    if user.is_admin or user.username == item.creator:
        return True
    if action is Action.READ and user.username in item.viewers:
        return True
    return action in (Action.READ, Action.CHANGE) and _edits_owner(user, item, owner)


def job_data(user: User, item: Job, owner: Algorithm | None = None) -> bool:
    """The job's input and output values (files, images): the creator's, admins', and those
    the creator shared them with (``viewers``; the editors of ``owner``, the job's algorithm,
    with ``share_with_editors``)."""
    if user.is_admin or user.username == item.creator or user.username in item.viewers:
        return True
    return item.share_with_editors and _edits_owner(user, item, owner)


def share_job(user: User, item: Job) -> bool:
    """Who decides who sees a job's data: its creator (and admins), not the editors."""
    return user.is_admin or user.username == item.creator


def image(
    user: User,
    action: Action,
    item: Image,
    archives: Iterable[Archive] = (),
    *,
    jobs: Iterable[tuple[Job, Algorithm | None]] = (),
) -> bool:
    """``archives``: the archives that hold the image; their members read and use it.
    ``jobs``: the jobs that used or produced the image, each with its algorithm; who may see
    one's data may READ the image (only its owner USEs it as a job's input)."""
    if user.is_admin or user.username == item.owner:
        return True
    if action in (Action.READ, Action.USE) and any(archive(user, Action.READ, a) for a in archives):
        return True
    return action is Action.READ and any(job_data(user, j, owner) for j, owner in jobs)


def archive(user: User, action: Action, item: Archive) -> bool:
    if user.is_admin:
        return True
    if action in (Action.READ, Action.USE):
        return user.username in item.members()
    return user.username == item.creator or user.username in item.editors


def archive_item(user: User, action: Action, owner: Archive) -> bool:
    """Items of ``owner``: its members read them, its editors and uploaders add and change,
    its editors delete."""
    if action in (Action.READ, Action.USE):
        return archive(user, action, owner)
    if action is Action.DELETE:
        return archive(user, Action.CHANGE, owner)
    return archive(user, Action.CHANGE, owner) or user.username in owner.uploaders


def upload(user: User, action: Action, item: Upload) -> bool:
    """Only the creator USEs an upload (as a job's input), admins included: the pipeline
    re-checks a job's uploads against the job's creator alone."""
    if action is Action.USE:
        return user.username == item.creator
    return user.is_admin or user.username == item.creator


def upload_session(user: User, action: Action, creator: str) -> bool:
    """An upload session is its creator's, like the uploads in it."""
    return user.is_admin or user.username == creator


def archive_run(user: User, action: Action, creator: str) -> bool:
    """An algorithm's run over an archive: its creator's (and admins')."""
    return user.is_admin or user.username == creator


def token(user: User, action: Action, owner: str) -> bool:
    return user.is_admin or user.username == owner


def access_request(user: User, action: Action, requester: str, owner: Algorithm) -> bool:
    """``owner`` is the algorithm asked for; ``requester`` the user who asked."""
    if user.is_admin or is_editor(user, owner):
        return True
    return action is Action.READ and user.username == requester


def require(allowed_to_read: bool, allowed: bool, what: str, *, message: str = "") -> None:
    """404 ``"<what> not found"`` unless readable; 403 (``message``) unless ``allowed``."""
    if not allowed_to_read:
        raise NotFound(f"{what} not found")
    if not allowed:
        raise PermissionDenied(message or f"You may not change {what}")
