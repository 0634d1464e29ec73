"""Access requests: a user asks to use an algorithm; its editors accept or reject, or the
algorithm accepts everyone at once (grand-challenge's access request handling)."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict


class AccessRequestHandling(StrEnum):
    MANUAL_REVIEW = "MANUAL_REVIEW"
    ACCEPT_ALL = "ACCEPT_ALL"


class AccessRequestStatus(StrEnum):
    PENDING = "PENDING"
    ACCEPTED = "ACCEPTED"
    REJECTED = "REJECTED"


class AccessRequest(BaseModel):
    model_config = ConfigDict(defer_build=True)

    algorithm: str
    user: str
    status: AccessRequestStatus
    created: str
    modified: str


class AccessRequestReview(BaseModel):
    """An editor's answer: accepting makes the user one of the algorithm's users, rejecting
    (also after an acceptance) takes that away."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    status: Literal["ACCEPTED", "REJECTED"]
