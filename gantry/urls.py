"""Every URL the API hands out: on the API's own https host, under its base path."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, urlencode


@dataclass(frozen=True)
class Urls:
    base: str  # e.g. https://api.example.org/api/v1/

    def __post_init__(self) -> None:
        if not self.base.endswith("/"):
            object.__setattr__(self, "base", self.base + "/")

    def path(self, path: str, **query: object) -> str:
        url = self.base + path.lstrip("/")
        params = {k: v for k, v in query.items() if v is not None}
        return f"{url}?{urlencode(params)}" if params else url

    def algorithm(self, pk: str) -> str:
        return self.path(f"algorithms/{pk}/")

    def algorithm_image(self, pk: str) -> str:
        return self.path(f"algorithms/images/{pk}/")

    def algorithm_model(self, pk: str) -> str:
        return self.path(f"algorithms/models/{pk}/")

    def job(self, pk: str) -> str:
        return self.path(f"algorithms/jobs/{pk}/")

    def interface(self, pk: int) -> str:
        return self.path(f"components/interfaces/{pk}/")

    def image(self, pk: str) -> str:
        return self.path(f"cases/images/{pk}/")

    def image_file(self, image_pk: str, file_pk: str, filename: str) -> str:
        return self.path(f"cases/images/{image_pk}/files/{file_pk}/{quote(filename)}")

    def value_file(self, job_pk: str, value_pk: int, filename: str) -> str:
        return self.path(f"algorithms/jobs/{job_pk}/values/{value_pk}/{quote(filename)}")

    def archive(self, pk: str) -> str:
        return self.path(f"archives/{pk}/")

    def archive_item(self, pk: str) -> str:
        return self.path(f"archives/items/{pk}/")

    def archive_item_file(self, item_pk: str, value_pk: int, filename: str) -> str:
        return self.path(f"archives/items/{item_pk}/values/{value_pk}/{quote(filename)}")

    def upload(self, pk: str) -> str:
        return self.path(f"uploads/{pk}/")

    def upload_session(self, pk: str) -> str:
        return self.path(f"cases/upload-sessions/{pk}/")

    def site(self, path: str) -> str:
        """A human page URL; Gantry has no web UI, so these point at the API resource."""
        return self.path(path)

    def pk_from(self, url_or_pk: str, collection: str) -> str:
        """The pk from an ``api_url`` of ``collection`` (e.g. 'algorithms/') or a bare pk."""
        value = url_or_pk.strip()
        marker = "/" + collection.strip("/") + "/"
        if "://" in value or value.startswith("/"):
            if marker not in value:
                raise ValueError(f"{url_or_pk!r} is not a URL of {collection}")
            tail = value.split(marker, 1)[1]
            return tail.strip("/").split("/")[0]
        return value
