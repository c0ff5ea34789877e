"""Schemathesis against /openapi.json through the WSGI app: no input makes a 5xx, and every
answer is one the document describes (status code, content type, body schema)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis_jsonschema._from_schema as jsonschema_strategies
import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings
from hypothesis.internal.conjecture import utils as conjecture_utils
from schemathesis import checks
from schemathesis.internal.result import Ok
from schemathesis.specs.openapi.schemas import BaseOpenAPISchema

from tests.web_library import Library, build_library, make_app

schemathesis.experimental.OPEN_API_3_1.enable()


class _ManyWithMore:
    """`many.more()` for hypothesis-jsonschema, on top of the iterator API that replaced it.

    hypothesis-jsonschema 0.23.1 (the latest, used by schemathesis for every object schema)
    calls `many(...).more()`, which Hypothesis removed in 6.170.x; without this, schemathesis
    cannot generate a single query string. Pinning hypothesis<=6.170.0 makes it unnecessary.
    """

    def __init__(self, data: Any, min_size: int, max_size: float, average_size: float) -> None:
        self._many = conjecture_utils.many(data, min_size, max_size, average_size)
        self._many.__enter__()
        self._elements = iter(self._many)

    def more(self) -> bool:
        try:
            next(self._elements)
        except StopIteration:
            self._many.__exit__(None)
            return False
        return True

    def reject(self, why: str | None = None) -> None:
        self._many.reject(why)


if not hasattr(conjecture_utils.many, "more"):
    jsonschema_strategies.cu = type(  # type: ignore[attr-defined,assignment]
        "ConjectureUtils", (), {"many": _ManyWithMore}
    )

CHECKS = (
    checks.not_a_server_error,
    checks.status_code_conformance,  # type: ignore[attr-defined]
    checks.content_type_conformance,  # type: ignore[attr-defined]
    checks.response_schema_conformance,  # type: ignore[attr-defined]
)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Library]:
    built = build_library(tmp_path_factory.mktemp("library"))
    yield built
    built.local.close()


@pytest.fixture(scope="module")
def fuzzed_app(library: Library, tmp_path_factory: pytest.TempPathFactory) -> Flask:
    return make_app(library, tmp_path_factory.mktemp("thumbs"))


@pytest.fixture
def api_schema(fuzzed_app: Flask) -> BaseOpenAPISchema:
    schema = schemathesis.from_wsgi("/openapi.json", fuzzed_app)
    assert isinstance(schema, BaseOpenAPISchema)
    return schema


schema = schemathesis.from_pytest_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_api_answers_every_input_as_documented(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=CHECKS)


def test_every_documented_operation_is_fuzzed(api_schema: BaseOpenAPISchema) -> None:
    fuzzed = set()
    for result in api_schema.get_all_operations():
        # An operation schemathesis cannot read would silently go unfuzzed.
        assert isinstance(result, Ok), result
        fuzzed.add((result.ok().method.upper(), result.ok().path))
    paths = api_schema.raw_schema["paths"]
    assert fuzzed == {(method.upper(), path) for path, ops in paths.items() for method in ops}


def test_thumbnails_made_while_fuzzing_stay_in_their_folder(fuzzed_app: Flask) -> None:
    folder: Path = fuzzed_app.extensions["wmpd"].thumbnails.directory
    for path in folder.rglob("*") if folder.exists() else []:
        assert path.resolve().is_relative_to(folder.resolve())
