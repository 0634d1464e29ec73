"""Which user the algorithm runs as."""

from __future__ import annotations

import grp
import os
import pwd
import re

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
