"""One JSON error shape for every failure, Flask's own included.

    {"error": {"code": "bad_parameter", "message": "...", "parameter": "k"}}

`parameter` is present only on 400s about one parameter, so that a launcher can point
at the field the user got wrong.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from wmpd.errors import QueryError

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
# Codes for the statuses Flask and Werkzeug raise on their own.
_CODE_FOR_STATUS = {
    400: "bad_parameter",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """An error a view raises on purpose; becomes the JSON error response."""

    def __init__(self, status: int, code: str, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.parameter = parameter


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def error_response(status: int, code: str, message: str, parameter: str | None = None) -> Response:
    body: dict[str, str] = {"code": code, "message": message}
    if parameter is not None:
        body["parameter"] = parameter
    response = jsonify({"error": body})
    response.status_code = status
    if status == 503:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(QueryError, _query_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)


def _api_error(exc: ApiError) -> Response:
    return error_response(exc.status, exc.code, exc.message, exc.parameter)


def _query_error(exc: QueryError) -> Response:
    message = str(exc).removeprefix(f"{exc.parameter}: ")
    return error_response(400, "bad_parameter", message, exc.parameter)


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    code = _CODE_FOR_STATUS.get(status) or _snake(exc.name)
    response = error_response(status, code, exc.description or exc.name)
    # Keep what the exception itself says in headers (405's Allow, 416's Content-Range).
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def _unexpected_error(exc: Exception) -> Response:
    logger.error("unexpected error while serving a request", exc_info=exc)
    return error_response(500, "internal_error", "internal error; the daemon log has details")


def _snake(name: str) -> str:
    return "_".join(name.lower().replace("-", " ").split())
