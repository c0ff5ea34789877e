"""The "ui" blueprint: the search page, the token login, and the OpenSearch description."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from flask import Blueprint, Response, make_response, redirect, render_template, request
from jinja2 import TemplateNotFound
from markupsafe import escape
from werkzeug.wrappers import Response as BaseResponse

from wmpd.web.context import web_context
from wmpd.web.security import TOKEN_COOKIE, token_matches

logger = logging.getLogger(__name__)

blueprint = Blueprint("ui", __name__)

# A year: the cookie only holds the token, which the user changes in the config.
COOKIE_MAX_AGE_SECONDS = 365 * 24 * 3600
OPENSEARCH_MIMETYPE = "application/opensearchdescription+xml"
# Served when the page's templates are not installed, so that the routes still answer.
_FALLBACK_PAGES = {
    "index.html": "<h1>wmpd</h1><p>The search page is not installed; the JSON API is at "
    '<a href="/openapi.json">/openapi.json</a>.</p>',
    "login.html": '<h1>wmpd</h1><form method="post" action="/login">'
    '<input type="hidden" name="next" value="{next}">'
    '<label>Token <input type="password" name="token" autofocus></label>'
    "<button>Log in</button></form><p>{error}</p>",
}


@blueprint.get("/")
def index() -> Response:
    auth_required = web_context().server.token is not None
    return _html("index.html", 200, auth_required=auth_required)


@blueprint.get("/login")
def login_form() -> BaseResponse:
    if web_context().server.token is None:
        return redirect(_safe_next(request.args.get("next")), code=303)
    return _html("login.html", 200, next=_safe_next(request.args.get("next")), error=None)


@blueprint.post("/login")
def login() -> BaseResponse:
    token = web_context().server.token
    target = _safe_next(request.form.get("next"))
    if token is None:
        return redirect(target, code=303)
    supplied = request.form.get("token", "")
    if not token_matches(supplied, token):
        logger.warning("failed login from %s", request.remote_addr)
        return _html("login.html", 401, next=target, error="That token is not right.")
    response = redirect(target, code=303)
    response.set_cookie(
        TOKEN_COOKIE,
        supplied,
        max_age=COOKIE_MAX_AGE_SECONDS,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.is_secure,
    )
    return response


@blueprint.post("/logout")
def logout() -> BaseResponse:
    response = redirect("/login", code=303)
    response.delete_cookie(TOKEN_COOKIE, path="/", httponly=True, samesite="Strict")
    return response


@blueprint.get("/opensearch.xml")
def opensearch() -> Response:
    base_url = request.host_url.rstrip("/")
    response = make_response(render_template("opensearch.xml", base_url=base_url))
    response.mimetype = OPENSEARCH_MIMETYPE
    return response


def _html(template: str, status: int, **context: object) -> Response:
    try:
        body = render_template(template, **context)
    except TemplateNotFound:
        logger.warning("template %s is not installed; serving a bare page", template)
        body = _fallback(template, context)
    response = make_response(body, status)
    response.headers["Cache-Control"] = "no-store"
    return response


def _fallback(template: str, context: dict[str, object]) -> str:
    values = {key: escape("" if value is None else str(value)) for key, value in context.items()}
    page = _FALLBACK_PAGES[template].format_map(_Missing(values))
    return f'<!doctype html><html lang="en"><meta charset="utf-8"><title>wmpd</title>{page}</html>'


class _Missing(dict[str, object]):
    def __missing__(self, key: str) -> str:
        return ""


def _safe_next(target: str | None) -> str:
    """Where to go after logging in: a path on this server only (never `//evil.example`)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    return "/" if parts.scheme or parts.netloc else target
