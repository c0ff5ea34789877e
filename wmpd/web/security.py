"""Request checks (Host, Origin, token) and the headers every response carries.

The server is meant for this computer only. A web page elsewhere can still make a browser
talk to it: through DNS rebinding (a hostile name that resolves to 127.0.0.1, caught by the
Host check) or a cross-site form post (caught by the Origin check). The token guards a
server that is reachable from the network.
"""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import quote, urlsplit

from flask import Flask, Response, redirect, request
from werkzeug.wrappers import Response as BaseResponse

from wmpd.config import ServerConfig
from wmpd.web.problems import error_response

TOKEN_COOKIE = "wmpd_token"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: under no-referrer Chromium sends `Origin: null` on
    # the page's own form posts (login, logout), which the Origin check must refuse.
    # Nothing is ever sent to another site either way.
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
# Reachable without a token: the liveness probe, the login form, and the page's own files.
PUBLIC_ENDPOINTS = frozenset({"api.healthz", "ui.login_form", "ui.login", "static"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})
_DEFAULT_PORTS = {"http": 80, "https": 443}

HostPort = tuple[str, int | None]


def install_security(app: Flask, server: ServerConfig) -> None:
    allowed = allowed_hosts(server)

    def check_request() -> BaseResponse | None:
        return _refuse_host(allowed) or _refuse_origin() or _refuse_without_token(server.token)

    app.before_request(check_request)
    app.after_request(add_security_headers)


def add_security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if response.mimetype == "application/json" and "Cache-Control" not in response.headers:
        response.headers["Cache-Control"] = "no-store"  # search results name private files
    return response


# -- Host -------------------------------------------------------------------------------------


def allowed_hosts(server: ServerConfig) -> list[HostPort]:
    """Loopback names on any port, server.allowed_hosts, and the address bound to, if specific."""
    names = [*LOOPBACK_HOSTS, *server.allowed_hosts]
    if server.host.strip().lower() not in _WILDCARD_HOSTS:
        names.append(server.host)
    # A name listed with a port only matches that port; bare names match any port, so that
    # an SSH tunnel or a second port still works.
    parsed = [split_host(_bracket_ipv6(name)) for name in names]
    return [entry for entry in parsed if entry is not None]


def split_host(value: str) -> HostPort | None:
    """'Example.org:8756' → ('example.org', 8756); None when it is no valid Host value."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        host, rest = value[: end + 1], value[end + 1 :]
        if end < 0:
            return None
    else:
        host, colon, port_text = value.partition(":")
        rest = colon + port_text
    host = host.removesuffix(".")  # "localhost." is the same name, fully qualified
    if not host or any(c in host for c in "/@?#\\ ") or (rest and not rest.startswith(":")):
        return None
    port_text = rest[1:]
    if not rest:
        return host, None
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return host, int(port_text)


def host_allowed(header: str, allowed: list[HostPort]) -> bool:
    given = split_host(header)
    if given is None:
        return False
    host, port = given
    return any(host == name and (want is None or want == port) for name, want in allowed)


def _bracket_ipv6(name: str) -> str:
    try:
        address = ipaddress.ip_address(name.strip())
    except ValueError:
        return name
    return f"[{address}]" if address.version == 6 else name


def _refuse_host(allowed: list[HostPort]) -> Response | None:
    header = request.headers.get("Host", "")
    if host_allowed(header, allowed):
        return None
    message = (
        f"requests for host {header[:100]!r} are refused; add the name to server.allowed_hosts "
        "if you reach wmpd by it"
    )
    return error_response(403, "forbidden_host", message)


# -- Origin -----------------------------------------------------------------------------------


def origin_matches(origin: str, host_header: str, scheme: str) -> bool:
    """Whether an Origin header names this server as the request reached it."""
    try:
        parts = urlsplit(origin)
        origin_port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return False
    own = split_host(host_header)
    if own is None or parts.hostname is None or parts.path or parts.query:
        return False
    own_port = own[1] or _DEFAULT_PORTS.get(scheme)
    hostname = _bracket_ipv6(parts.hostname).lower()
    return parts.scheme == scheme and hostname == own[0] and origin_port == own_port


def _refuse_origin() -> Response | None:
    origin = request.headers.get("Origin")
    if request.method in SAFE_METHODS or origin is None:
        return None
    if origin_matches(origin, request.headers.get("Host", ""), request.scheme):
        return None
    message = "requests that change state must come from wmpd's own page"
    return error_response(403, "forbidden_origin", message)


# -- token ------------------------------------------------------------------------------------


def token_matches(supplied: str | None, expected: str) -> bool:
    if supplied is None:
        return False
    # Constant time, so response timing does not reveal how much of a guess was right.
    return hmac.compare_digest(supplied.encode("utf-8"), expected.encode("utf-8"))


def supplied_token() -> str | None:
    """The token from `Authorization: Bearer ...`, else from the login cookie."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get(TOKEN_COOKIE)


def _refuse_without_token(token: str | None) -> BaseResponse | None:
    if token is None or request.endpoint in PUBLIC_ENDPOINTS:
        return None
    if token_matches(supplied_token(), token):
        return None
    if request.endpoint is not None and request.endpoint.startswith("ui."):
        target = request.full_path.rstrip("?")
        return redirect(f"/login?next={quote(target, safe='/')}", code=303)
    response = error_response(
        401, "unauthorized", "a token is required: send `Authorization: Bearer <token>`"
    )
    response.headers["WWW-Authenticate"] = 'Bearer realm="wmpd"'
    return response
