"""boto3 clients built once per process from the settings (endpoint, region)."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import boto3
from botocore.config import Config

from gantry.settings import Settings


class Clients:
    """Lazily created boto3 clients; one per service for this process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._session = boto3.session.Session(region_name=settings.region)
        self._config = Config(retries={"mode": "standard", "max_attempts": 5})

    def client(self, service: str) -> Any:
        return self._session.client(
            service, endpoint_url=self.settings.endpoint_url, config=self._config
        )

    @cached_property
    def dynamodb(self) -> Any:
        return self.client("dynamodb")

    @cached_property
    def dynamodb_resource(self) -> Any:
        return self._session.resource(
            "dynamodb", endpoint_url=self.settings.endpoint_url, config=self._config
        )

    def _s3_client(self, endpoint_url: str | None) -> Any:
        # Virtual-host style breaks against local endpoints; path style works everywhere.
        config = self._config.merge(
            Config(s3={"addressing_style": "path"}, signature_version="s3v4")
        )
        return self._session.client("s3", endpoint_url=endpoint_url, config=config)

    @cached_property
    def s3(self) -> Any:
        return self._s3_client(self.settings.endpoint_url)

    @cached_property
    def s3_presign(self) -> Any:
        """The client that signs URLs for API clients (signing makes no request)."""
        if not self.settings.presign_endpoint_url:
            return self.s3
        return self._s3_client(self.settings.presign_endpoint_url)

    def presign_credentials(self) -> tuple[str, str]:
        """The access key and secret key ``s3_presign`` signs URLs with (as they are now)."""
        credentials = self._session.get_credentials()
        if credentials is None:
            return "", ""
        frozen = credentials.get_frozen_credentials()
        return frozen.access_key, frozen.secret_key

    @cached_property
    def batch(self) -> Any:
        return self.client("batch")

    @cached_property
    def sagemaker(self) -> Any:
        return self.client("sagemaker")

    @cached_property
    def events(self) -> Any:
        return self.client("events")

    @cached_property
    def sqs(self) -> Any:
        return self.client("sqs")

    @cached_property
    def sts(self) -> Any:
        return self.client("sts")


# One CopyObject request copies up to 5 GiB. Below this size a copy is that one request (on one
# machine, a hard link of the stored file) rather than a multipart copy in 8 MiB parts.
SINGLE_COPY_LIMIT = 1024**3


def copy_object(s3: Any, bucket: str, source_key: str, key: str) -> None:
    """Server-side copy within ``bucket``, metadata included; the managed multipart copy only
    for objects above ``SINGLE_COPY_LIMIT``. A missing source raises ClientError (404)."""
    size = s3.head_object(Bucket=bucket, Key=source_key)["ContentLength"]
    if size <= SINGLE_COPY_LIMIT:
        s3.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": source_key})
    else:
        s3.copy({"Bucket": bucket, "Key": source_key}, bucket, key)
