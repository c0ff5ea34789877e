"""The OpenAPI 3.1 document of every route; tests hold it to the app's real URL map."""

from __future__ import annotations

from typing import Any

from wmpd import __version__
from wmpd.search import MAX_K, MAX_OFFSET
from wmpd.web.params import DEFAULT_K, MAX_IMAGE_ID
from wmpd.web.thumbs import DEFAULT_THUMB_SIZE, MAX_THUMB_SIZE, MIN_THUMB_SIZE

Schema = dict[str, Any]

_TIME_DESCRIPTION = (
    "capture time bound: an ISO date (2024-05-01) or date and time (local time unless it "
    "gives a zone), or UNIX seconds"
)
_ERROR_CODES = (
    "bad_parameter, not_found, method_not_allowed, payload_too_large, forbidden_host, "
    "forbidden_origin, unauthorized, model_loading, internal_error"
)


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Schema]:
    """Error responses; 401 and 403 apply to every route behind the checks."""
    descriptions = {
        400: "a parameter is wrong; `parameter` names it",
        401: "a token is required (server.token is set)",
        403: "the Host or Origin header is not this server's",
        404: "no such image, or its file is gone",
        413: "the upload is larger than server.max_upload_bytes",
        503: "the model is still loading (code model_loading); retry after Retry-After",
    }
    return {str(s): _json(_ref("Error"), descriptions[s]) for s in (*statuses, 401, 403)}


def _query(name: str, schema: Schema, description: str, required: bool = False) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "schema": schema,
        "description": description,
    }


_IMAGE_ID = {
    "name": "image_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_IMAGE_ID},
}
_PAGE_PARAMS = [
    _query(
        "k",
        {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": DEFAULT_K},
        "results per page",
    ),
    _query(
        "offset",
        {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0},
        "results to skip (the `next` of the previous page)",
    ),
]
_FILTER_FIELDS: dict[str, tuple[Schema, str]] = {
    "min_score": ({"type": "number", "minimum": -1, "maximum": 1}, "lowest cosine score"),
    "folder": ({"type": "string"}, "only pictures under this absolute folder path"),
    "after": ({"type": "string"}, _TIME_DESCRIPTION + " (inclusive)"),
    "before": ({"type": "string"}, _TIME_DESCRIPTION + " (exclusive)"),
    "type": ({"type": "string"}, "comma-separated image types, e.g. jpeg,png"),
}
_FILTER_PARAMS = [_query(name, s, d) for name, (s, d) in _FILTER_FIELDS.items()]
_Q_DESCRIPTION = "what the picture shows; `+term`, `-term`, `term^2` and quoted phrases work"


def _search_body() -> Schema:
    fields: Schema = {"q": {"type": "string", "description": _Q_DESCRIPTION}}
    fields["k"] = {"type": "integer", "minimum": 1, "maximum": MAX_K}
    fields["offset"] = {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET}
    fields.update({name: s for name, (s, _) in _FILTER_FIELDS.items()})
    multipart = {
        "type": "object",
        "additionalProperties": False,
        "properties": {"image": {"type": "string", "format": "binary"}, **fields},
    }
    json_fields = {
        **fields,
        "after": {"type": ["string", "number"]},
        "before": {"type": ["string", "number"]},
        "type": {"type": ["string", "array"], "items": {"type": "string"}},
    }
    json_body = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "image_id": {"type": "integer", "minimum": 0, "maximum": MAX_IMAGE_ID},
            "path": {"type": "string", "description": "a catalogued file path"},
            **json_fields,
        },
    }
    return {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": multipart},
            "application/json": {"schema": json_body},
        },
    }


def _schemas() -> dict[str, Schema]:
    nullable_int = {"type": ["integer", "null"]}
    image_fields: Schema = {
        "id": {"type": "integer"},
        "paths": {"type": "array", "items": {"type": "string"}},
        "width": nullable_int,
        "height": nullable_int,
        "taken_at": {"type": ["string", "null"], "description": "ISO-8601 UTC, ending in Z"},
        "format": {"type": ["string", "null"]},
        "thumb_url": {"type": "string"},
        "file_url": {"type": "string"},
    }
    hit = {**image_fields, "path": {"type": "string"}, "score": {"type": "number"}}
    image = {**image_fields, "hash": {"type": "string"}}
    return {
        "Hit": {"type": "object", "required": list(hit), "properties": hit},
        "Image": {"type": "object", "required": list(image), "properties": image},
        "SearchResults": {
            "type": "object",
            "required": ["results", "took_ms", "next"],
            "properties": {
                "results": {"type": "array", "items": _ref("Hit")},
                "took_ms": {"type": "number"},
                "next": {"type": ["integer", "null"], "description": "offset of the next page"},
            },
        },
        "Status": _status_schema(),
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string", "description": f"one of {_ERROR_CODES}"},
                        "message": {"type": "string"},
                        "parameter": {"type": "string"},
                    },
                }
            },
        },
    }


def _status_schema() -> Schema:
    number, integer, text = {"type": "number"}, {"type": "integer"}, {"type": "string"}
    maybe_text = {"type": ["string", "null"]}
    fields: Schema = {
        "state": {"enum": ["loading_model", "indexing", "idle", "paused", "model_error"]},
        "state_detail": maybe_text,
        "version": text,
        "uptime_seconds": number,
        "model_id": text,
        "model_ready": {"type": "boolean"},
        "images": integer,
        "paths": integer,
        "failed": integer,
        "failures": {"type": "object", "additionalProperties": integer},
        "recent_failures": {"type": "array", "items": {"type": "object"}},
        "queue": integer,
        "progress": {"type": "object", "required": ["done", "total", "rate", "eta_seconds"]},
        "roots": {"type": "array", "items": {"type": "object", "required": ["path", "state"]}},
        "index_size": integer,
        "index_consistent": {"type": "boolean"},
        "warnings": {"type": "array", "items": text},
    }
    return {"type": "object", "required": list(fields), "properties": fields}


def _html(description: str) -> Schema:
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


_REDIRECT = {"description": "redirect (to /login when a token is required)"}


def _paths() -> dict[str, Schema]:
    search = {"200": _json(_ref("SearchResults"), "one page of results, best first")}
    image = {"200": {"description": "the bytes", "content": {"image/*": {}}}}
    return {
        "/api/search": {
            "get": {
                "operationId": "searchText",
                "summary": "search by words",
                "parameters": [
                    _query("q", {"type": "string"}, _Q_DESCRIPTION, True),
                    *_PAGE_PARAMS,
                    *_FILTER_PARAMS,
                ],
                "responses": {**search, **_errors(400, 503)},
            },
            "post": {
                "operationId": "searchMixed",
                "summary": "search by a picture (upload, image_id or path), plus words",
                "requestBody": _search_body(),
                "responses": {**search, **_errors(400, 404, 413, 503)},
            },
        },
        "/api/images/{image_id}": {
            "get": {
                "operationId": "getImage",
                "parameters": [_IMAGE_ID],
                "responses": {"200": _json(_ref("Image"), "the image"), **_errors(400, 404)},
            }
        },
        "/api/images/{image_id}/similar": {
            "get": {
                "operationId": "similarImages",
                "summary": "more like this image",
                "parameters": [_IMAGE_ID, *_PAGE_PARAMS, *_FILTER_PARAMS],
                "responses": {**search, **_errors(400, 404, 503)},
            }
        },
        "/api/status": {
            "get": {
                "operationId": "getStatus",
                "responses": {"200": _json(_ref("Status"), "daemon status"), **_errors()},
            }
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "security": [{}],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["ok"],
                            "properties": {"ok": {"const": True}},
                        },
                        "the server answers",
                    ),
                    **_errors(),
                },
            }
        },
        "/thumb/{image_id}": {
            "get": {
                "operationId": "getThumbnail",
                "parameters": [
                    _IMAGE_ID,
                    _query(
                        "size",
                        {"type": "integer", "default": DEFAULT_THUMB_SIZE},
                        f"longest side; clamped to {MIN_THUMB_SIZE}..{MAX_THUMB_SIZE}",
                    ),
                ],
                "responses": {
                    "200": {"description": "JPEG", "content": {"image/jpeg": {}}},
                    "304": {"description": "not modified (If-None-Match)"},
                    **_errors(400, 404),
                },
            }
        },
        "/file/{image_id}": {
            "get": {
                "operationId": "getFile",
                "parameters": [_IMAGE_ID],
                "responses": {
                    **image,
                    "206": {"description": "a byte range"},
                    "304": {"description": "not modified"},
                    "416": _json(_ref("Error"), "the range is outside the file"),
                    **_errors(400, 404),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "getOpenApi",
                "responses": {"200": _json({"type": "object"}, "this document"), **_errors()},
            }
        },
        **_ui_paths(),
    }


def _ui_paths() -> dict[str, Schema]:
    login_form = {
        "type": "object",
        "properties": {"token": {"type": "string"}, "next": {"type": "string"}},
    }
    return {
        "/": {
            "get": {
                "operationId": "page",
                "responses": {"200": _html("the search page"), "303": _REDIRECT, **_errors()},
            }
        },
        "/login": {
            "get": {
                "operationId": "loginForm",
                "security": [{}],
                "responses": {"200": _html("the token form"), "303": _REDIRECT, **_errors()},
            },
            "post": {
                "operationId": "login",
                "security": [{}],
                "requestBody": {
                    "content": {"application/x-www-form-urlencoded": {"schema": login_form}}
                },
                "responses": {
                    "303": {"description": "logged in: sets the wmpd_token cookie"},
                    "401": _html("wrong token"),
                    "403": _errors()["403"],
                },
            },
        },
        "/logout": {
            "post": {
                "operationId": "logout",
                "responses": {"303": {"description": "cookie cleared"}, **_errors()},
            }
        },
        "/opensearch.xml": {
            "get": {
                "operationId": "openSearch",
                "responses": {
                    "200": {
                        "description": "OpenSearch description",
                        "content": {"application/opensearchdescription+xml": {}},
                    },
                    "303": _REDIRECT,
                    **_errors(),
                },
            }
        },
        "/static/{filename}": {
            "get": {
                "operationId": "staticFile",
                "security": [{}],
                "parameters": [
                    {
                        "name": "filename",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": {"description": "a file of the page"},
                    "304": {"description": "not modified"},
                    **_errors(404),
                },
            }
        },
    }


def openapi_document() -> Schema:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "wmpd",
            "version": __version__,
            "description": "Local semantic image search. Every error has the Error shape.",
        },
        "servers": [{"url": "/"}],
        "security": [{}, {"bearer": []}, {"cookie": []}],
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "server.token, when the config sets one",
                },
                "cookie": {"type": "apiKey", "in": "cookie", "name": "wmpd_token"},
            },
        },
    }
