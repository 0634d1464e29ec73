"""DynamoDB responses on the embedded endpoint, serialised by moto at a fraction of the CPU.

moto 5.2.5 writes every response by walking the operation's output shape; for each member of
each structure (each of the ten members of every attribute value of every item is one) it
asks an attribute picker, which builds a context object and works out up to a dozen
spellings of the name (the shape's name, snake_case forms, prefixes, the model's name) before
it looks them up. On the embedded endpoint that was about half of the CPU of a GetItem.
DynamoDB's results reach the serialiser as plain dicts, and for a plain dict the spellings
the picker tries depend on the member's shape and name only.

``install()`` gives moto's DynamoDB results a serialiser that is moto's own with one
shortcut: for a plain dict, the picker's list of names is worked out once per member (by
moto's picker itself) and the dict is looked up with it, first name present wins, as the
picker does; anything else (objects, dict subclasses, response transformers, another picker)
goes through moto's picker on every call as before. Same walk, same types, same bytes
(``tests/integration/test_local_dynamodb_responses.py`` serialises real responses both ways
and compares them). Installed for the moto version it was written against only.
"""

from __future__ import annotations

import functools
from typing import Any

from gantry.local import moto_patch

# The moto whose ``ActionResult.execute_result`` and serialiser this reproduces.
MOTO_VERSION = "5.2.5"


def install() -> bool:
    """DynamoDB results serialised with the shortcut; False (moto's own stays) for another
    moto version."""
    from moto.dynamodb.responses import DynamoResult

    return moto_patch.replace(
        DynamoResult, "execute_result", _execute_result, moto_version=MOTO_VERSION
    )


def uninstall() -> None:
    """moto's own serialisation again (tests compare the two)."""
    from moto.dynamodb.responses import DynamoResult

    moto_patch.restore(DynamoResult, "execute_result")


def _execute_result(self: Any, context: Any) -> Any:
    """moto's ``ActionResult.execute_result`` with the serialiser class swapped."""
    from moto import settings
    from moto.core.serialize import XFormedAttributePicker

    response_transformers = getattr(context.response, "RESPONSE_KEY_PATH_TO_TRANSFORMER", None)
    value_picker = XFormedAttributePicker(response_transformers=response_transformers)
    serializer = _shortcut_class(context.serializer_class)(
        operation_model=context.operation_model,
        pretty_print=settings.PRETTIFY_RESPONSES,
        value_picker=value_picker,
    )
    serialized = serializer.serialize(self.result)
    return serialized["status_code"], serialized["headers"], serialized["body"]


@functools.cache
def _shortcut_class(serializer_class: type[Any]) -> type[Any]:
    from moto.core.serialize import (
        DEFAULT_ALIAS_PROVIDERS,
        AttributePickerContext,
        XFormedAttributePicker,
    )

    # (member shape, its parent, name) -> the names moto's picker tries on a plain dict, in
    # its order. The shapes are kept alive by the key, so their ids are never reused.
    tried: dict[tuple[int, int, str], tuple[Any, Any, tuple[str, ...] | None]] = {}

    def names_tried(picker: Any, shape: Any, key: str) -> tuple[str, ...] | None:
        parent = getattr(shape, "parent", None)
        slot = (id(shape), id(parent), key)
        known = tried.get(slot)
        if known is None:
            # moto's own list for a plain dict: its aliases depend on the shape, the parent
            # structure and the object's class only (no Meta on a dict, class name "dict").
            context = AttributePickerContext(obj={}, key=key, shape=shape)
            names = tuple(picker.get_possible_keys(context))
            # A dotted name would be a path into the object: left to moto.
            known = (shape, parent, None if any("." in n for n in names) else names)
            tried[slot] = known
        return known[2]

    class Shortcut(serializer_class):
        def get_value(self, value: Any, key: str, shape: Any) -> Any:
            picker = self._value_picker
            if (
                type(value) is dict
                and type(picker) is XFormedAttributePicker
                and not picker.response_transformers
                and picker.alias_providers == DEFAULT_ALIAS_PROVIDERS
            ):
                names = names_tried(picker, shape, key)
                if names is not None:
                    # The picker's answer: the first name the dict holds, else None.
                    for name in names:
                        if name in value:
                            return value[name]
                    return None
            return super().get_value(value, key, shape)

    Shortcut.__name__ = Shortcut.__qualname__ = f"Shortcut{serializer_class.__name__}"
    return Shortcut
