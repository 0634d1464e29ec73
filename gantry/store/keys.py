"""Key layout of every entity in the one table (see DESIGN.md §3)."""

from __future__ import annotations

from gantry import resources
from gantry.store.pagination import ListKey

BY_OWNER = resources.GSI_BY_OWNER
BY_PARENT = resources.GSI_BY_PARENT
BY_STATUS = resources.GSI_BY_STATUS
BY_COMPUTE = resources.GSI_BY_COMPUTE_ID

SOCKETS = ListKey(BY_OWNER, "SOCKETS")


def socket(pk: int) -> str:
    return f"SOCKET#{pk}"


def socket_slug(slug: str) -> str:
    return f"SOCKETSLUG#{slug}"


def socket_title(title: str) -> str:
    return f"SOCKETTITLE#{title.strip().lower()}"


def algorithm(pk: str) -> str:
    return f"ALG#{pk}"


def algorithm_slug(slug: str) -> str:
    return f"ALGSLUG#{slug}"


def algorithms_of(username: str) -> ListKey:
    return ListKey(BY_OWNER, f"ALGS#{username}")


# Usernames cannot contain "*": no user's own list is this one.
ALL_ALGORITHMS = ListKey(BY_OWNER, "ALGS#*")


def algorithm_image(pk: str) -> str:
    return f"ALGIMG#{pk}"


def algorithm_images_of(algorithm_pk: str) -> ListKey:
    return ListKey(BY_PARENT, f"ALGIMGS#{algorithm_pk}")


def algorithm_model(pk: str) -> str:
    return f"ALGMODEL#{pk}"


def algorithm_models_of(algorithm_pk: str) -> ListKey:
    return ListKey(BY_PARENT, f"ALGMODELS#{algorithm_pk}")


def algorithm_model_sha256(algorithm_pk: str, sha256: str) -> str:
    """Claimed by the one model of the algorithm with these bytes."""
    return f"ALGMODELSHA#{algorithm_pk}#{sha256}"


def desired_model(algorithm_pk: str) -> str:
    """The algorithm's desired model: a pointer, so that switching is one write."""
    return f"ALGMODELDESIRED#{algorithm_pk}"


def desired_image(algorithm_pk: str) -> str:
    """The algorithm's desired image: a pointer, so that switching is one write."""
    return f"ALGIMGDESIRED#{algorithm_pk}"


def algorithm_image_sha256(algorithm_pk: str, sha256: str) -> str:
    """The claim that one image of the algorithm has this config sha256."""
    return f"ALGIMGSHA#{algorithm_pk}#{sha256}"


# Imports that ended Failed or Cancelled, by the time they ended (on the by-status index).
ENDED_IMPORTS = "ALGIMGS-ENDED"
# Model imports that ended Failed, by the time they failed (on the by-status index).
FAILED_MODEL_IMPORTS = "ALGMODELS-FAILED"


def job(pk: str) -> str:
    return f"JOB#{pk}"


def jobs_of(username: str) -> ListKey:
    return ListKey(BY_OWNER, f"JOBS#{username}")


def jobs_of_algorithm(username: str, algorithm_pk: str) -> ListKey:
    return ListKey(BY_PARENT, f"JOBS#{username}#ALG#{algorithm_pk}")


# Every user's jobs of one algorithm (its editors' view), and every job (admins'); usernames
# cannot contain "*" or "#ALL#", so no user's own list has these names.
def jobs_of_algorithm_all(algorithm_pk: str) -> ListKey:
    return ListKey(BY_PARENT, f"JOBS#*#ALG#{algorithm_pk}")


ALL_JOBS = ListKey(BY_OWNER, "JOBS#*")

ACTIVE_JOBS = "ACTIVE"


def compute_job(compute_id: str) -> str:
    return f"COMPUTE#{compute_id}"


def image(pk: str) -> str:
    return f"IMG#{pk}"


def images_of(username: str) -> ListKey:
    return ListKey(BY_OWNER, f"IMAGES#{username}")


# Everyone's images, uploads and tokens (admins' lists; gantry.store.listings).
ALL_IMAGES = ListKey(BY_OWNER, "IMAGES#*")


def upload(pk: str) -> str:
    return f"UPLOAD#{pk}"


def uploads_of(username: str) -> ListKey:
    return ListKey(BY_OWNER, f"UPLOADS#{username}")


ALL_UPLOADS = ListKey(BY_OWNER, "UPLOADS#*")


def upload_session(pk: str) -> str:
    return f"UPLOADSESSION#{pk}"


def upload_sessions_of(username: str) -> ListKey:
    return ListKey(BY_OWNER, f"UPLOADSESSIONS#{username}")


ALL_UPLOAD_SESSIONS = ListKey(BY_OWNER, "UPLOADSESSIONS#*")


def user(username: str) -> str:
    return f"USER#{username}"


def token(token_hash: str) -> str:
    return f"TOKEN#{token_hash}"


def token_ref(pk: str) -> str:
    return f"TOKENREF#{pk}"


def tokens_of(username: str) -> ListKey:
    return ListKey(BY_OWNER, f"TOKENS#{username}")


ALL_TOKENS = ListKey(BY_OWNER, "TOKENS#*")


def idempotency(key: str) -> str:
    return f"IDEMPOTENCY#{key}"


def archive(pk: str) -> str:
    return f"ARCHIVE#{pk}"


def archive_slug(slug: str) -> str:
    return f"ARCHIVESLUG#{slug}"


def archives_of(username: str) -> ListKey:
    return ListKey(BY_OWNER, f"ARCHIVES#{username}")


# Usernames cannot contain "*": no user's own list is this one (an admin's list).
ALL_ARCHIVES = ListKey(BY_OWNER, "ARCHIVES#*")


def archive_item(pk: str) -> str:
    return f"ARCHIVEITEM#{pk}"


def archive_items_of(archive_pk: str) -> ListKey:
    return ListKey(BY_PARENT, f"ARCHIVEITEMS#{archive_pk}")


def archive_image(archive_pk: str, image_pk: str) -> str:
    """One image of an archive, listed once however many of its items hold it."""
    return f"ARCHIVEIMG#{archive_pk}#{image_pk}"


def archive_images_of(archive_pk: str) -> ListKey:
    return ListKey(BY_PARENT, f"ARCHIVEIMAGES#{archive_pk}")
