"""Replacing one method of a moto class with Gantry's version of it, for one moto version.

Each replacement (``gantry.local.transactions``, ``gantry.local.dynamodb_responses``) is moto's
own code with one change, so it is right only for the moto it was written against: with any
other version moto's own stays. moto's original is kept on the class beside it, so installing
twice changes nothing and a test can reach (or put back) moto's own.
"""

from __future__ import annotations

from typing import Any

import moto


def _saved(name: str) -> str:
    return f"_gantry_moto_{name}"


def replace(owner: type, name: str, replacement: Any, *, moto_version: str) -> bool:
    """``owner.name`` becomes ``replacement``; False (moto's own stays) unless moto is
    ``moto_version``."""
    if moto.__version__ != moto_version:
        return False
    if not hasattr(owner, _saved(name)):
        setattr(owner, _saved(name), getattr(owner, name))
        setattr(owner, name, replacement)
    return True


def restore(owner: type, name: str) -> None:
    """moto's own ``owner.name`` again, if it was replaced."""
    original = owner.__dict__.get(_saved(name))
    if original is not None:
        setattr(owner, name, original)
        delattr(owner, _saved(name))


def original(owner: type, name: str) -> Any:
    """moto's own ``owner.name``, replaced or not."""
    return getattr(owner, _saved(name), getattr(owner, name))
