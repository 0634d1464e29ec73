"""Which user the algorithm runs as."""

from __future__ import annotations

import grp
import os
import pwd
import re
from dataclasses import dataclass
from pathlib import Path

from batch_runner import imageroot

NOBODY = (65534, 65534)
_SPEC = re.compile(r"^(?P<user>[A-Za-z0-9_.-]+)(?::(?P<group>[A-Za-z0-9_.-]+))?$")


class UserError(Exception):
    """The configured user cannot be used; the message is safe to show to users."""


def _uid(name: str) -> tuple[int, int | None]:
    try:
        entry = pwd.getpwnam(name)
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        pass
    if name.isdigit():
        uid = int(name)
        try:
            return uid, pwd.getpwuid(uid).pw_gid
        except KeyError:
            return uid, None
    raise UserError(f"The algorithm user '{name}' does not exist")


def _gid(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        pass
    if name.isdigit():
        return int(name)
    raise UserError(f"The algorithm group '{name}' does not exist")


def resolve_user(spec: str | None) -> tuple[int, int] | None:
    """(uid, gid) to switch to, or None to keep the runner's own user.

    Root never runs algorithms as itself unless asked ("0:0"): default nobody. A non-root
    runner cannot switch user, so it only accepts its own.
    """
    is_root = os.geteuid() == 0
    if spec is None:
        return NOBODY if is_root else None
    match = _SPEC.match(spec.strip())
    if not match:
        raise UserError(f"The algorithm user '{spec}' is not valid (use uid:gid or name)")
    uid, default_gid = _uid(match.group("user"))
    gid = _gid(match.group("group")) if match.group("group") else default_gid
    if gid is None:
        gid = uid
    if not is_root:
        if uid != os.geteuid():
            raise UserError(f"The runner cannot switch to the algorithm user '{spec}'")
        return None
    return uid, gid


MSG_ROOT_USER = (
    "The algorithm image runs as root: its USER is {user}. Add a USER instruction with a "
    "non-root user to the Dockerfile, then build and upload the image again"
)


@dataclass(frozen=True)
class ImageUser:
    uid: int
    gid: int
    # From the image's /etc/passwd; None when the image names its user by number only.
    home: str | None


def resolve_image_user(spec: str | None, root: Path) -> ImageUser:
    """The image's USER (``name``, ``uid``, ``name:group``, ``uid:gid``) looked up in the
    image's own ``/etc/passwd`` and ``/etc/group`` under ``root``; never root.

    As Docker: a numeric uid absent from passwd runs with gid 0 unless a group is given.
    """
    text = (spec or "").strip()
    if text in ("", "root", "0") or text.startswith(("root:", "0:")):
        raise UserError(MSG_ROOT_USER.format(user=repr(text) if text else "not set"))
    match = _SPEC.match(text)
    if not match:
        raise UserError(f"The image's USER '{text}' is not valid (use name, uid, name:group)")
    user, group = match.group("user"), match.group("group")
    try:
        return _look_up(user, group, text, root)
    except imageroot.AccountFileTooLarge as error:
        raise UserError(str(error)) from None


def _look_up(user: str, group: str | None, text: str, root: Path) -> ImageUser:
    entries = imageroot.passwd(root)
    entry = next((e for e in entries if e.name == user), None)
    if entry is None and user.isdigit():
        entry = next((e for e in entries if e.uid == int(user)), None)
    if entry is not None:
        uid, gid, home = entry.uid, entry.gid, entry.home
    elif user.isdigit():
        uid, gid, home = int(user), 0, None
    else:
        raise UserError(f"The image's USER '{user}' does not exist in the image's /etc/passwd")
    if group is not None:
        known = imageroot.groups(root)
        if group in known:
            gid = known[group]
        elif group.isdigit():
            gid = int(group)
        else:
            raise UserError(f"The image's group '{group}' does not exist in the image's /etc/group")
    if uid == 0:
        raise UserError(MSG_ROOT_USER.format(user=repr(text)))
    return ImageUser(uid, gid, home)
