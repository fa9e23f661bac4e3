"""Issue 7: schema-driven fuzzing of every endpoint from /openapi.json (schemathesis), with and
without credentials: never a 5xx, every reply conforms to the schema (status documented,
body valid). Bounded: FUZZ_EXAMPLES cases per operation and mode, no per-case deadline."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import checks

from backend.app import create_app
from backend.state.settings import Settings
from tests.fakes import TOKEN
from tests.service_fixtures import Service

FUZZ_EXAMPLES = 25
CLICK_EXAMPLES = 100
# The conformance checks (status documented, content type, body schema) and no 5xx. Positive-
# data acceptance is left out: /webhook's body is a free-form object parsed per action.
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]
AUTH = {"Authorization": "Basic " + base64.b64encode(b"ls:pw").decode()}


@pytest.fixture(scope="module")
def fuzzed_app(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    app = create_app(
        Settings(
            redis_url=redis_url,
            label_studio_url="http://127.0.0.1:9",  # never reached: the API makes no LS calls
            label_studio_api_key=TOKEN,
            basic_auth_user="ls",
            basic_auth_pass="pw",
            data_dir=Path(tmp_path_factory.mktemp("fuzz")),
            predict_deadline_s=0.2,
            _env_file=None,  # type: ignore[call-arg]
        )
    )
    with TestClient(app):  # runs the lifespan (Redis, store, queues)
        yield app


FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)


def _check(case: schemathesis.Case, headers: dict[str, str], statuses: list[int]) -> None:
    response = case.call(headers=headers)
    assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code}"
    case.validate_response(response, checks=CHECKS)
    statuses.append(int(response.status_code))


@pytest.mark.parametrize("credentials", [True, False], ids=["auth", "no-auth"])
def test_every_endpoint(fuzzed_app: FastAPI, credentials: bool) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app, headers=AUTH)
    headers = AUTH if credentials else {"Authorization": "Basic bm86cGU="}  # "no:pe"
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 7
    for operation in operations:
        statuses: list[int] = []

        @FUZZ
        @given(case=operation.as_strategy())
        def fuzz(case: schemathesis.Case) -> None:
            _check(case, headers, statuses)  # noqa: B023 (one operation per loop turn)

        fuzz()
        if not credentials and operation.path != "/webhook":
            assert set(statuses) == {401}, operation.path


def test_schema_valid_requests_are_accepted(fuzzed_app: FastAPI) -> None:
    """Issue 22, item 8: the schema says what the API accepts. Every request generated from the
    schema's positive side is accepted, or refused only for state the schema cannot know: an
    unknown project or group (404), a label config without BrushLabels/Image (400)."""
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app, headers=AUTH)
    for result in schema.get_all_operations():
        operation = result.ok()

        @FUZZ
        @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
        def accepted(case: schemathesis.Case) -> None:
            response = case.call(headers=AUTH)
            ok = response.status_code < 300 or response.status_code in (400, 404, 409)
            assert ok, f"{case.method} {case.path} {case.body!r}: {response.text[:300]}"

        accepted()


TRICKY = [0.5, "abc", [64], {}, None, True, 10**30, -1]  # values that broke the lane before


def _junk() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(TRICKY),
        st.sampled_from(TRICKY),
        st.none(),
        st.booleans(),
        st.text(max_size=5),
        st.integers(min_value=-(10**30), max_value=10**30),
        st.floats(allow_nan=True, allow_infinity=True),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    )


def _valid_region(kind: str, x: float, y: float, label: str) -> dict[str, Any]:
    value: dict[str, Any] = {"x": x, "y": y, kind: [label]}
    if kind == "rectanglelabels":
        value |= {"width": 20.0, "height": 20.0, "rotation": 0}
    return {"type": kind, "original_width": 64, "original_height": 48, "value": value}


FIELDS = [  # every field a smart region carries: one of them gets a junk value
    (),
    ("original_width",),
    ("original_height",),
    ("is_positive",),
    ("value",),
    ("value", "x"),
    ("value", "y"),
    ("value", "width"),
    ("value", "height"),
    ("value", "rotation"),
    ("value", "positive"),
    ("value", "keypointlabels"),
    ("value", "rectanglelabels"),
]


@st.composite
def _click_context(draw: st.DrawFn) -> dict[str, Any]:
    """A valid click of 1-3 regions, then (mostly) one field of one region replaced by junk."""
    n = draw(st.integers(1, 3))
    regions = [
        _valid_region(
            draw(st.sampled_from(["keypointlabels", "rectanglelabels"])),
            draw(st.floats(0, 75)),
            draw(st.floats(0, 75)),
            draw(st.sampled_from(["Cat", "Cat", "Dog", "Bird"])),
        )
        for _ in range(n)
    ]
    if draw(st.integers(0, 4)):  # 4 in 5: one field broken
        i = draw(st.integers(0, n - 1))
        path, junk = draw(st.sampled_from(FIELDS)), draw(_junk())
        if not path:
            regions[i] = junk  # the region itself
        elif len(path) == 1:
            regions[i][path[0]] = junk
        elif isinstance(regions[i]["value"], dict):
            regions[i]["value"][path[1]] = junk
    return {"result": regions}


CLICK_CONTEXTS = _click_context()


def _broken(kind: str, path: tuple[str, ...], junk: Any) -> Any:
    region = _valid_region(kind, 40.0, 30.0, "Cat")
    if not path:
        return junk
    if len(path) == 1:
        region[path[0]] = junk
    else:
        region["value"][path[1]] = junk
    return region


def test_every_field_of_a_click_with_every_tricky_value_gives_no_5xx(
    make_service: Callable[..., Service],
) -> None:
    """Issue 22, item 7: systematically, each field of a smart region (first or last of the
    click, point or rectangle) set to each value that broke the lane before: 200 or 422."""
    from tests.test_interactive import click, setup_project

    svc = make_service(interactive_deadline_s=10)
    task = setup_project(svc)
    seen: set[int] = set()
    for kind in ("keypointlabels", "rectanglelabels"):
        for path in FIELDS:
            for junk in TRICKY:
                valid = _valid_region(kind, 10.0, 10.0, "Cat")
                for regions in (
                    [_broken(kind, path, junk), valid],
                    [valid, _broken(kind, path, junk)],
                ):
                    reply = click(svc, task, regions)
                    assert reply.status_code in (200, 422), (reply.text, regions)
                    seen.add(reply.status_code)
    assert seen == {200, 422}


def test_click_contexts_never_give_a_5xx(make_service: Callable[..., Service]) -> None:
    """Issue 22, items 7 and 8: generated smart-tool contexts (valid and malformed fields) are
    answered 200 by the interactive worker or refused 422 with a reason; never a 5xx."""
    from tests.test_interactive import click, setup_project

    svc = make_service(interactive_deadline_s=10)
    task = setup_project(svc)
    statuses: list[int] = []

    @settings(
        max_examples=CLICK_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    @given(context=CLICK_CONTEXTS)
    def fuzz(context: dict[str, Any]) -> None:
        regions = context["result"]
        reply = click(svc, task, regions)
        assert reply.status_code < 500, (reply.status_code, reply.text, regions)
        assert reply.status_code in (200, 422), reply.text
        statuses.append(reply.status_code)

    fuzz()
    assert 200 in statuses and 422 in statuses  # both sides of the validation were reached
