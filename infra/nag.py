"""cdk-nag acknowledgements: one helper so every one carries a rule id and a reason."""

from __future__ import annotations

from aws_cdk import Acknowledgment, Validations
from constructs import IConstruct


def acknowledge(scope: IConstruct, rule: str, reason: str) -> None:
    """Acknowledge one cdk-nag finding (``Rule`` or ``Rule[finding]``) on scope and below."""
    Validations.of(scope).acknowledge(Acknowledgment(id=rule, reason=reason))
