"""The API imports a router when a request may need it: each router's paths are declared in
``lambdas.api.app.ROUTERS`` and a request must be answered by the route a fully loaded API
would choose, whichever requests came before."""

from __future__ import annotations

import importlib
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lambdas.api.app import ROUTER_NAMES, ROUTERS, create_app, pattern_matches, routers_for

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


@pytest.fixture(scope="module")
def ctx() -> Any:
    from gantry.context import Context
    from gantry.settings import Settings

    return Context.create(Settings(region="us-east-1"))


def _rules(ctx: Any, name: str) -> set[tuple[str, str]]:
    """(method, rule) of each route the router declares."""
    router = importlib.import_module(f"lambdas.api.routers.{name}").build(ctx)
    return {(method, key[0]) for key in router._routes for method in key[1]}


def _segments(rule: str) -> list[str]:
    # A rule's variable (<pk>) matches any one segment: "*" in a pattern.
    return [re.sub(r"^<\w+>$", "*", part) for part in rule.strip("/").split("/")]


def test_every_route_lies_within_its_routers_paths(ctx) -> None:
    modules = Path(__file__).parents[2].joinpath("lambdas", "api", "routers").glob("[!_]*.py")
    assert sorted(ROUTER_NAMES) == sorted(path.stem for path in modules)
    for name, patterns in ROUTERS:
        for method, rule in _rules(ctx, name):
            # A pattern holds a rule when it matches the rule's own segments, "*" by "*" only,
            # and its method.
            segments = _segments(rule)
            assert any(pattern_matches(p, method, segments) for p in patterns), (name, rule)


def _first_route(app: Any, method: str, path: str) -> Any:
    """The route Powertools calls for this request (static routes first, then dynamic, each
    in the order held), as its code object: the same function whichever app built it."""
    for route in app._static_routes + app._dynamic_routes:
        if route.method == method and route.rule.match(path):
            return route.func.__code__
    return None


def _paths(ctx: Any) -> set[str]:
    """Every route's path with its variables filled by a number or by a literal segment of
    another route (where routes of two routers could meet)."""
    rules = {rule for name in ROUTER_NAMES for _, rule in _rules(ctx, name)}
    literals = {part for rule in rules for part in _segments(rule) if part != "*"}
    paths = set()
    for rule in rules:
        variables = re.findall(r"<\w+>", rule)
        for position, value in itertools.product(range(len(variables)), [*literals, "1"]):
            path = rule
            for index, variable in enumerate(variables):
                path = path.replace(variable, value if index == position else "1", 1)
            paths.add(path)
        paths.add(re.sub(r"<\w+>", "1", rule))
    return paths


def test_a_request_gets_the_route_a_fully_loaded_api_would_choose(ctx) -> None:
    full = create_app(ctx)
    full.mount(ROUTER_NAMES)
    # All loaded, in the reverse order: the routes are tried in the order of ROUTERS still.
    backwards = create_app(ctx)
    for name in reversed(ROUTER_NAMES):
        backwards.mount([name])
    # Each request in an API that has loaded only what that request needs.
    lazy: dict[tuple[str, ...], Any] = {}
    paths = _paths(ctx)
    assert len(paths) > 100
    for path, method in itertools.product(paths, METHODS):
        names = routers_for(method, path)
        if names not in lazy:
            lazy[names] = create_app(ctx)
            lazy[names].mount(names)
        expected = _first_route(full, method, path)
        assert _first_route(lazy[names], method, path) == expected, (method, path)
        assert _first_route(backwards, method, path) == expected, (method, path)
    # A job is created without the algorithms router, whose routes on algorithms/<pk>/ are
    # for other methods; listing jobs may need it.
    assert routers_for("POST", "/api/v1/algorithms/jobs/") == ("jobs",)
    assert routers_for("GET", "/api/v1/algorithms/jobs/") == ("jobs", "algorithms")
    assert routers_for("GET", "/api/v1/gcapi/") == ("gcapi",)
    assert routers_for("POST", "/api/v1/gcapi/") == ("gcapi",)
    assert routers_for("GET", "/api/v1/nothing/") == ()


def test_the_document_lists_every_route_whatever_was_loaded(ctx) -> None:
    app = create_app(ctx)
    app.mount(["gcapi"])
    paths = app.get_openapi_schema().paths or {}
    for name in ROUTER_NAMES:
        for _, rule in _rules(ctx, name):
            assert re.sub(r"<(\w+)>", r"{\1}", rule).rstrip("/") in paths, rule


PROBE = """
import json, sys
import lambdas.api.app as api
loaded = {"init": sorted(m for m in sys.modules if m.startswith("lambdas.api.routers."))}
from pydantic import BaseModel
from gantry.local.client import LambdaContextStub, proxy_event
answer = api.handler(proxy_event("GET", "gcapi/", headers={"Host": "h"}), LambdaContextStub())
assert answer["statusCode"] == 200, answer
loaded["request"] = sorted(sys.modules)

def models(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from models(sub)

loaded["built"] = sorted(
    {f"{m.__module__}.{m.__name__}" for m in models(BaseModel)
     if m.__module__.startswith("gantry.") and m.__pydantic_complete__}
)
api._app.mount(api.ROUTER_NAMES)
loaded["all"] = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
print(json.dumps(loaded))
"""
HEAVY = ("SimpleITK", "numpy", "bioimageio", "onnxruntime", "onnx", "torch", "jsonschema")


def test_a_cold_request_imports_only_what_it_needs() -> None:
    """The deployed handler's cold start, answering the version check (no AWS call)."""
    probe = f"HEAVY = {HEAVY!r}\n{PROBE}"
    env = {**os.environ, "GANTRY_REGION": "us-east-1"}
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env
    )
    # Before it, the handler's log line of the request.
    loaded = json.loads(done.stdout.splitlines()[-1])

    assert loaded["init"] == []
    # The version check imports its router, not the others nor their services.
    routers = [m for m in loaded["request"] if m.startswith("lambdas.api.routers.")]
    assert routers == ["lambdas.api.routers.gcapi"]
    assert not [m for m in loaded["request"] if m.startswith("gantry.services")]
    # Nor Powertools' batch utility and its parser's models (the queue handlers' part).
    powertools = ("aws_lambda_powertools.utilities.batch", "aws_lambda_powertools.utilities.parser")
    assert not [m for m in loaded["request"] if m.startswith(powertools)]
    # The domain models are built when first used: only those every request uses are.
    assert set(loaded["built"]) <= {
        "gantry.settings.Settings",
        "gantry.users.User",
        "gantry.store.users.TokenInfo",
    }
    # Every router loaded: still no imaging, model-running or schema-validation library.
    assert loaded["all"] == []
