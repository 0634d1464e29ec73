"""IAM's evaluation of one request against one principal's identity policies.

The rules of AWS's policy evaluation logic that Gantry's policies use: an explicit Deny wins,
then any Allow, else the request is denied. ``Action``/``NotAction`` match case-insensitively
with ``*`` and ``?``; ``Resource``/``NotResource`` case-sensitively. Conditions: the string,
ARN and Bool operators with ``IfExists``; any other operator (or a set operator) raises, so a
policy the rehearsal cannot judge fails the check rather than passing it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any


class Unjudgeable(Exception):
    """A policy element this evaluator does not implement."""


@dataclass(frozen=True)
class Request:
    action: str
    resource: str
    context: Mapping[str, str] = field(default_factory=dict)


@cache
def _pattern(glob: str, ignore_case: bool) -> re.Pattern[str]:
    body = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in glob)
    flags = (re.IGNORECASE if ignore_case else 0) | re.DOTALL
    return re.compile(f"^{body}$", flags)


def glob_match(glob: str, value: str, *, ignore_case: bool = False) -> bool:
    if "${" in glob:
        raise Unjudgeable(f"policy variable in {glob!r}")
    return bool(_pattern(glob, ignore_case).match(value))


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _check_resolved(values: Iterable[Any], element: str) -> list[str]:
    out = []
    for value in values:
        if not isinstance(value, str):
            raise Unjudgeable(f"{element} {value!r} is not a concrete string")
        out.append(value)
    return out


_STRING_OPS = {
    "StringEquals": lambda p, v: p == v,
    "StringNotEquals": lambda p, v: p != v,
    "StringEqualsIgnoreCase": lambda p, v: p.lower() == v.lower(),
    "StringLike": lambda p, v: glob_match(p, v),
    "StringNotLike": lambda p, v: not glob_match(p, v),
    "ArnEquals": lambda p, v: p == v,
    "ArnLike": lambda p, v: glob_match(p, v),
    "ArnNotEquals": lambda p, v: p != v,
    "ArnNotLike": lambda p, v: not glob_match(p, v),
    "Bool": lambda p, v: p.lower() == v.lower(),
}
_NEGATED = {"StringNotEquals", "StringNotLike", "ArnNotEquals", "ArnNotLike"}


def _condition_holds(conditions: Mapping[str, Any], context: Mapping[str, str]) -> bool:
    for operator, tests in conditions.items():
        if ":" in operator:
            raise Unjudgeable(f"set operator {operator}")
        if_exists = operator.endswith("IfExists")
        base = operator.removesuffix("IfExists")
        if base not in _STRING_OPS:
            raise Unjudgeable(f"condition operator {operator}")
        for key, wanted in tests.items():
            value = next((v for k, v in context.items() if k.lower() == key.lower()), None)
            if value is None:
                # A missing key satisfies only IfExists and the negated operators.
                if if_exists or base in _NEGATED:
                    continue
                return False
            patterns = _check_resolved(_as_list(wanted), f"condition {key}")
            if base in _NEGATED:
                if not all(_STRING_OPS[base](p, value) for p in patterns):
                    return False
            elif not any(_STRING_OPS[base](p, value) for p in patterns):
                return False
    return True


def _matches(statement: Mapping[str, Any], request: Request) -> bool:
    if "Principal" in statement or "NotPrincipal" in statement:
        raise Unjudgeable("a principal element in an identity policy")
    if "Action" in statement:
        actions = _check_resolved(_as_list(statement["Action"]), "action")
        if not any(glob_match(a, request.action, ignore_case=True) for a in actions):
            return False
    else:
        actions = _check_resolved(_as_list(statement["NotAction"]), "action")
        if any(glob_match(a, request.action, ignore_case=True) for a in actions):
            return False
    if "Resource" in statement:
        resources = _check_resolved(_as_list(statement["Resource"]), "resource")
        if not any(glob_match(r, request.resource) for r in resources):
            return False
    elif "NotResource" in statement:
        resources = _check_resolved(_as_list(statement["NotResource"]), "resource")
        if any(glob_match(r, request.resource) for r in resources):
            return False
    else:
        raise Unjudgeable("a statement without Resource")
    return _condition_holds(statement.get("Condition", {}), request.context)


def allowed(statements: Iterable[Mapping[str, Any]], request: Request) -> bool:
    """Whether the statements allow the request (explicit Deny > Allow > implicit deny)."""
    allow = False
    for statement in statements:
        if not _matches(statement, request):
            continue
        if statement.get("Effect") == "Deny":
            return False
        if statement.get("Effect") != "Allow":
            raise Unjudgeable(f"effect {statement.get('Effect')!r}")
        allow = True
    return allow
