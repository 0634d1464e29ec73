"""The signed result contract: the platform accepts only the result its job's runner wrote."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from gantry.contract import (
    Invocation,
    ResultVerificationError,
    new_signing_key,
    sign,
    verify_result,
)

PK = "6d7f2f1e-5c1a-4b1e-9a40-3f1d2c3b4a59"


def _result(pk: str = PK, **extra: object) -> bytes:
    return json.dumps(
        {"pk": pk, "return_code": 0, "exec_duration": 1.5, "outputs": [], **extra}
    ).encode()


def test_keys_are_fresh_32_byte_hex() -> None:
    keys = {new_signing_key() for _ in range(50)}
    assert len(keys) == 50
    assert all(len(bytes.fromhex(k)) == 32 for k in keys)


def test_a_correctly_signed_result_is_accepted() -> None:
    key = new_signing_key()
    body = _result(user_safe_error_message=None, extra_field="kept")
    result = verify_result(body=body, signature_hex=sign(body, key), key_hex=key, expected_pk=PK)
    assert result.pk == PK
    assert result.return_code == 0
    assert result.exec_duration == 1.5


def test_signature_case_and_whitespace_do_not_matter() -> None:
    key = new_signing_key()
    body = _result()
    signature = " " + sign(body, key).upper() + "\n"
    assert verify_result(body=body, signature_hex=signature, key_hex=key, expected_pk=PK)


def test_a_tampered_body_is_rejected() -> None:
    key = new_signing_key()
    body = _result()
    signature = sign(body, key)
    tampered = body.replace(b'"return_code": 0', b'"return_code": 1')
    assert tampered != body
    with pytest.raises(ResultVerificationError, match="signature does not match"):
        verify_result(body=tampered, signature_hex=signature, key_hex=key, expected_pk=PK)


def test_a_signature_under_another_key_is_rejected() -> None:
    body = _result()
    with pytest.raises(ResultVerificationError, match="signature does not match"):
        verify_result(
            body=body,
            signature_hex=sign(body, new_signing_key()),
            key_hex=new_signing_key(),
            expected_pk=PK,
        )


def test_a_garbage_signature_is_rejected() -> None:
    key = new_signing_key()
    with pytest.raises(ResultVerificationError, match="signature does not match"):
        verify_result(body=_result(), signature_hex="not-hex", key_hex=key, expected_pk=PK)


@pytest.mark.parametrize("signature", [None, ""])
def test_an_unsigned_result_is_rejected(signature: str | None) -> None:
    with pytest.raises(ResultVerificationError, match="not signed"):
        verify_result(
            body=_result(), signature_hex=signature, key_hex=new_signing_key(), expected_pk=PK
        )


def test_a_result_of_another_job_is_rejected_even_if_signed() -> None:
    # A replayed result of another job with the same key must not finish this job.
    key = new_signing_key()
    body = _result(pk="another-job")
    with pytest.raises(ResultVerificationError, match="belongs to 'another-job'"):
        verify_result(body=body, signature_hex=sign(body, key), key_hex=key, expected_pk=PK)


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"pk": "x"}'])
def test_a_signed_but_malformed_result_is_rejected(body: bytes) -> None:
    key = new_signing_key()
    with pytest.raises(ResultVerificationError, match="not valid"):
        verify_result(body=body, signature_hex=sign(body, key), key_hex=key, expected_pk=PK)


def _invocation(**changes: object) -> dict:
    base: dict = {
        "pk": PK,
        "inputs": [
            {"relative_path": "images/ct/a.mha", "bucket_name": "bucket", "bucket_key": "k"}
        ],
        "output_bucket_name": "bucket",
        "output_prefix": "io/job/1/output",
        "timeout": 60,
    }
    return {**base, **changes}


def test_invocation_normalises_the_output_prefix() -> None:
    assert Invocation.model_validate(_invocation()).output_prefix == "io/job/1/output/"


@pytest.mark.parametrize("prefix", ["", "/abs/path", "io/../other"])
def test_invocation_rejects_escaping_output_prefixes(prefix: str) -> None:
    with pytest.raises(ValidationError, match="output_prefix"):
        Invocation.model_validate(_invocation(output_prefix=prefix))


@pytest.mark.parametrize("path", ["../etc/passwd", "/etc/passwd", "a/../../b"])
def test_invocation_rejects_unsafe_input_paths(path: str) -> None:
    inputs = [{"relative_path": path, "bucket_name": "bucket", "bucket_key": "k"}]
    with pytest.raises(ValidationError, match="relative_path"):
        Invocation.model_validate(_invocation(inputs=inputs))
