"""The "api" blueprint: JSON search, image details, status, health and the OpenAPI document."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from flask import Blueprint, Response, jsonify, request

from wmpd.errors import QueryError
from wmpd.search import Hit, Searcher, SearchPage, unit_vector
from wmpd.web.context import WebContext, web_context
from wmpd.web.openapi import openapi_document
from wmpd.web.params import (
    FILTER_PARAMS,
    PAGE_PARAMS,
    SEARCH_PARAMS,
    PageParams,
    check_known,
    read_image_id,
    read_page,
    read_text,
    single_values,
)
from wmpd.web.problems import ApiError, not_found

blueprint = Blueprint("api", __name__)

FORM_MIMETYPES = frozenset({"multipart/form-data", "application/x-www-form-urlencoded"})
JSON_QUERY_PARAMS = (*SEARCH_PARAMS, "image_id", "path")
_NOTHING_TO_SEARCH = (
    "send a picture (a multipart file field `image`, or `image_id` or `path` in a JSON body) "
    "or a text query `q`"
)


@dataclass(frozen=True)
class PostQuery:
    """What a POST /api/search asks for: any mix of text and one picture."""

    page: PageParams
    q: str | None = None
    upload: tuple[bytes, str] | None = None
    image_id: int | None = None
    path: str | None = None


@blueprint.get("/healthz")
def healthz() -> Response:
    return jsonify({"ok": True})


@blueprint.get("/api/status")
def status() -> Response:
    return jsonify(web_context().status())


@blueprint.get("/openapi.json")
def openapi_json() -> Response:
    return jsonify(openapi_document())


@blueprint.get("/api/search")
def search_text() -> Response:
    values = single_values(request.args, SEARCH_PARAMS)
    query = read_text(values, "q")
    if query is None:
        raise QueryError("q", "is required: describe the picture, e.g. 'a dog on grass'")
    page = read_page(values)
    searcher = _ready().searcher
    return _results(
        searcher.search(searcher.text_vector(query, "q"), page.k, page.offset, page.filters)
    )


@blueprint.post("/api/search")
def search_mixed() -> Response:
    query = _read_post_query()
    searcher = _ready().searcher
    vector = _post_vector(searcher, query)
    page = query.page
    return _results(searcher.search(vector, page.k, page.offset, page.filters))


@blueprint.get("/api/images/<image_id:image_id>")
def image_details(image_id: int) -> Response:
    single_values(request.args, ())
    catalog = web_context().searcher.catalog()
    image = catalog.image(image_id)
    paths = catalog.paths_of_image(image_id) if image is not None else []
    if image is None or image.orphaned or not paths:
        raise not_found(f"no image with id {image_id}")
    # Built through Hit so that times and URLs read exactly as in search results.
    details = Hit(
        image.id, paths[0], paths, 0.0, image.width, image.height, image.taken_at, image.format
    ).to_json()
    del details["path"], details["score"]
    return jsonify({**details, "hash": image.hash})


@blueprint.get("/api/images/<image_id:image_id>/similar")
def similar(image_id: int) -> Response:
    page = read_page(single_values(request.args, (*PAGE_PARAMS, *FILTER_PARAMS)))
    searcher = _ready().searcher
    vector = _vector_for_id(searcher, image_id, "image_id")
    found = searcher.search(vector, page.k, page.offset, page.filters, frozenset({image_id}))
    return _results(found)


# -- helpers ----------------------------------------------------------------------------------


def _ready() -> WebContext:
    context = web_context()
    if not context.model_ready():
        raise ApiError(503, "model_loading", "the model is still loading; try again shortly")
    return context


def _results(page: SearchPage) -> Response:
    return jsonify(page.to_json())


def _read_post_query() -> PostQuery:
    if request.mimetype in FORM_MIMETYPES:
        return _read_form_query()
    if request.is_json:
        return _read_json_query()
    raise QueryError("Content-Type", "send multipart/form-data or application/json")


def _read_form_query() -> PostQuery:
    if "image" in request.form:
        raise QueryError("image", "must be a file upload, not a text field")
    values = single_values(request.form, SEARCH_PARAMS)
    for name in request.files:
        check_known(name, ("image", *SEARCH_PARAMS))
    uploads = request.files.getlist("image")
    if len(uploads) > 1:
        raise QueryError("image", "send one picture at a time")
    upload = None
    if uploads:
        data = uploads[0].read()
        if not data:
            raise QueryError("image", "the uploaded file is empty")
        name = os.path.basename(uploads[0].filename or "") or "upload"
        upload = (data, name)
    query = PostQuery(read_page(values), _optional_text(values), upload)
    if query.q is None and upload is None:
        raise QueryError("image", _NOTHING_TO_SEARCH)
    return query


def _read_json_query() -> PostQuery:
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # absurdly nested JSON: Python's parser gives up
        raise QueryError("body", "is nested too deeply") from None
    if not isinstance(body, dict):
        raise QueryError("body", "must be a JSON object")
    for name in body:
        check_known(name, JSON_QUERY_PARAMS)
    if "image_id" in body and "path" in body:
        raise QueryError("path", "give image_id or path, not both")
    image_id = read_image_id(body["image_id"], "image_id") if "image_id" in body else None
    path = body.get("path")
    if path is not None and (not isinstance(path, str) or not path):
        raise QueryError("path", "must be the path of a catalogued picture")
    query = PostQuery(read_page(body), _optional_text(body), None, image_id, path)
    if query.q is None and image_id is None and path is None:
        raise QueryError("image_id", _NOTHING_TO_SEARCH)
    return query


def _optional_text(values: dict[str, object]) -> str | None:
    # A page sends an empty `q` beside a picture; that means "no words", not a bad query.
    query = read_text(values, "q")
    return query if query is not None and query.strip() else None


def _post_vector(searcher: Searcher, query: PostQuery) -> np.ndarray:
    parts: list[np.ndarray] = []
    if query.upload is not None:
        parts.append(searcher.image_vector_from_bytes(*query.upload))
    if query.image_id is not None:
        parts.append(_vector_for_id(searcher, query.image_id, "image_id"))
    if query.path is not None:
        parts.append(_vector_for_id(searcher, _id_for_path(searcher, query.path), "path"))
    if query.q is not None:
        parts.append(searcher.text_vector(query.q, "q"))
    total = np.array(parts[0], dtype=np.float32)
    for part in parts[1:]:
        total += part
    return unit_vector(total, "q", "the words and the picture cancel each other out")


def _vector_for_id(searcher: Searcher, image_id: int, parameter: str) -> np.ndarray:
    try:
        return searcher.image_vector_from_id(image_id, parameter)
    except LookupError:
        raise not_found(f"no image with id {image_id}") from None


def _id_for_path(searcher: Searcher, path: str) -> int:
    # Only the catalog is asked: a path that is not in it is never opened.
    try:
        return searcher.image_id_for_path(path)
    except LookupError:
        raise not_found("no catalogued picture has this path") from None
