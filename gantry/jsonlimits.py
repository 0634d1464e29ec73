"""JSON from users and algorithms, parsed with a bound on its nesting.

Python's parser recurses once per level: a few kilobytes of ``[[[[…`` raise RecursionError,
which no ``except ValueError`` catches, and a value a few hundred levels deep parses but
cannot be stored (pydantic refuses to serialise it). Every JSON document that arrives from
outside (request bodies, uploaded JSON files, an algorithm's outputs, image archives) is read
through ``loads``, which turns both into a ValueError naming the limit.
"""

from __future__ import annotations

import json
from typing import Any

# Far deeper than any annotation or schema needs, far below what the parser or pydantic fail at.
MAX_DEPTH = 64


class TooDeep(ValueError):
    """JSON nested more than MAX_DEPTH levels."""

    def __init__(self) -> None:
        super().__init__(f"JSON nested more than {MAX_DEPTH} levels deep is not accepted")


def loads(text: str | bytes, **kwargs: Any) -> Any:
    """``json.loads``, raising TooDeep (a ValueError) for JSON nested too deeply."""
    try:
        value = json.loads(text, **kwargs)
    except RecursionError:
        raise TooDeep() from None
    if too_deep(value):
        raise TooDeep()
    return value


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether lists and objects in ``value`` nest more than ``limit`` levels (no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False
