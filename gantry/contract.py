"""The invocation and result contract between the platform and the runner.

Same shape as sagemaker-shim's task and ``inference_result.json`` so images shimmed for
grand-challenge fit. The platform never trusts a result it cannot verify: the runner signs
the exact body with a per-job key (HMAC-SHA256) and stores the hex digest as S3 metadata.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gantry.paths import validate_relative_path

# One machine only: the local compute backend sets this variable for the runner, which then
# asks the local endpoint for an input's stored file with this request header and copies the
# file instead of downloading the object (batch_runner.local_files). Never set on AWS.
LOCAL_FILES_ENV = "GANTRY_RUNNER_LOCAL_FILES"
LOCAL_FILE_HEADER = "x-gantry-local-file"
# An object the endpoint keeps in several files (a completed multipart upload's parts, in
# order) is named in that header as its folder and the files' names joined by this: the names
# are hex, so it never occurs in one.
LOCAL_FILE_SEPARATOR = "+"
# One machine only, with a durable endpoint: its folder the runner copies outputs to, each then
# stored by a PutObject that names the copy in LOCAL_FILE_HEADER.
LOCAL_INCOMING_ENV = "GANTRY_RUNNER_LOCAL_INCOMING"


def local_file_names(paths: list[str]) -> str:
    """The LOCAL_FILE_HEADER value naming an object's files (one folder), in order."""
    folder = os.path.dirname(paths[0])
    return os.path.join(folder, LOCAL_FILE_SEPARATOR.join(os.path.basename(p) for p in paths))


def local_file_paths(value: str) -> list[str]:
    """The files, in order, that a LOCAL_FILE_HEADER value names."""
    folder, _, names = value.rpartition("/")
    return [f"{folder}/{name}" for name in names.split(LOCAL_FILE_SEPARATOR)]


class InvocationInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    relative_path: str
    bucket_name: str = Field(min_length=3, max_length=63)
    bucket_key: str = Field(min_length=1, max_length=1024)
    decompress: bool = False

    @field_validator("relative_path")
    @classmethod
    def _safe_path(cls, value: str) -> str:
        return validate_relative_path(value, allow_nested_json=True)


class ExpectedOutput(BaseModel):
    """An output the runner checks early; the platform checks again after the job."""

    model_config = ConfigDict(extra="forbid")

    slug: str
    kind: str
    relative_path: str
    # Default schema of the kind and the socket's extra schema, both must hold.
    schemas: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("relative_path")
    @classmethod
    def _safe_path(cls, value: str) -> str:
        return validate_relative_path(value, allow_nested_json=True)


class InvocationModel(BaseModel):
    """The algorithm's active model: a tarball the runner extracts to /opt/ml/model."""

    model_config = ConfigDict(extra="forbid")

    bucket_name: str = Field(min_length=3, max_length=63)
    bucket_key: str = Field(min_length=1, max_length=1024)
    sha256: str | None = Field(default=None, pattern=r"^(sha256:)?[0-9a-f]{64}$")


class Invocation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pk: str = Field(min_length=1, max_length=128)
    inputs: list[InvocationInput]
    output_bucket_name: str
    output_prefix: str
    timeout: int = Field(gt=0, le=86400 * 7)
    # Gantry extensions: optional, ignored by sagemaker-shim (which takes the model from
    # its environment, GRAND_CHALLENGE_COMPONENT_MODEL).
    outputs: list[ExpectedOutput] | None = None
    model: InvocationModel | None = None

    @field_validator("output_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value or value.startswith("/") or ".." in value.split("/"):
            raise ValueError("output_prefix must be a relative S3 key prefix without '..'")
        return value if value.endswith("/") else value + "/"


class ResultOutput(BaseModel):
    model_config = ConfigDict(extra="allow")

    relative_path: str
    bucket_name: str
    bucket_key: str
    size: int | None = None


class InferenceResult(BaseModel):
    model_config = ConfigDict(extra="allow")

    pk: str
    return_code: int
    exec_duration: float | None = None
    invoke_duration: float | None = None
    outputs: list[ResultOutput] = Field(default_factory=list)
    user_safe_error_message: str | None = None
    user_process_last_stderr_lines: list[str] = Field(default_factory=list)
    user_process_last_stdout_lines: list[str] = Field(default_factory=list)
    # Problems the runner found in the outputs, keyed by socket slug.
    output_errors: dict[str, str] = Field(default_factory=dict)
    sandboxed: bool | None = None
    runner_version: str | None = None


def new_signing_key() -> str:
    """A fresh per-job key, hex encoded (32 bytes)."""
    return secrets.token_hex(32)


def sign(body: bytes, key_hex: str) -> str:
    return hmac.new(bytes.fromhex(key_hex), body, hashlib.sha256).hexdigest()


class ResultVerificationError(Exception):
    """The result file is not the one the runner of this job wrote."""


def verify_result(
    *, body: bytes, signature_hex: str | None, key_hex: str, expected_pk: str
) -> InferenceResult:
    """Check signature (constant time) and pk, then parse. Raises ResultVerificationError."""
    if not signature_hex:
        raise ResultVerificationError("The result file is not signed")
    if not hmac.compare_digest(sign(body, key_hex), signature_hex.strip().lower()):
        raise ResultVerificationError("The result file signature does not match")
    try:
        result = InferenceResult.model_validate(json.loads(body))
    except (ValueError, TypeError) as error:
        raise ResultVerificationError(f"The result file is not valid: {error}") from error
    if result.pk != expected_pk:
        raise ResultVerificationError(
            f"The result file belongs to {result.pk!r}, not to {expected_pk!r}"
        )
    return result
