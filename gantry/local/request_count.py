"""AWS requests counted at the local endpoint, by who made them, service and operation.

A WSGI middleware in front of the embedded endpoint's app: the figure the pipeline
benchmark prints per job and a test bounds. Who: a client whose User-Agent carries an app id
(botocore's ``user_agent_appid``, or ``AWS_SDK_UA_APP_ID`` in a runner's environment) is
counted under that name; everything else is the platform's.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

PLATFORM = "platform"
# Counted by time, not by job: the stack's queue pollers ask every few seconds.
POLLING_OPERATIONS = frozenset({"ReceiveMessage"})

Key = tuple[str, str, str]  # (who, service, operation)


class RequestCounter:
    """Counts the requests that pass through to ``app``. ``app_ids``: the User-Agent app ids
    counted apart, each under its own name (see ``classify``)."""

    def __init__(self, app: Any, app_ids: Iterable[str] = ()) -> None:
        self.app = app
        self.app_ids = tuple(app_ids)
        self.counts: collections.Counter[Key] = collections.Counter()
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        key = classify(environ, self.app_ids)
        with self._lock:
            self.counts[key] += 1
        return self.app(environ, start_response)

    def snapshot(self) -> collections.Counter[Key]:
        with self._lock:
            return collections.Counter(self.counts)


def classify(environ: dict[str, Any], app_ids: Iterable[str] = ()) -> Key:
    agent = environ.get("HTTP_USER_AGENT", "")
    who = next((app_id for app_id in app_ids if app_id in agent), PLATFORM)
    scope = environ.get("HTTP_AUTHORIZATION", "").split("Credential=", 1)[-1].split(",")[0]
    parts = scope.split("/")
    service = parts[3] if len(parts) > 3 else "?"
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        return who, service, target.rsplit(".", 1)[-1]
    method = environ.get("REQUEST_METHOD", "")
    if service == "s3":
        path = urlsplit(environ.get("PATH_INFO", "")).path.strip("/")
        has_key = "/" in path
        if method == "PUT" and environ.get("HTTP_X_AMZ_COPY_SOURCE"):
            return who, service, "CopyObject"
        operation = {
            "GET": "GetObject" if has_key else "ListObjects",
            "PUT": "PutObject",
            "HEAD": "HeadObject",
            "DELETE": "DeleteObject",
            "POST": "PostObject",
        }.get(method, method)
        return who, service, operation
    return who, service, method
