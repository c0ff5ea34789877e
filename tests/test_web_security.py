"""Host and Origin checks, the token, path traversal, and the headers on every response."""

from __future__ import annotations

import hmac
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.web_library import Library, build_library, files_opened, make_app
from wmpd.config import ServerConfig
from wmpd.web.security import (
    CONTENT_SECURITY_POLICY,
    allowed_hosts,
    host_allowed,
    origin_matches,
    token_matches,
)

TOKEN = "correct horse battery staple"
SECRET_TEXT = b"not a photo: a secret"


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Library]:
    built = build_library(tmp_path_factory.mktemp("library"))
    yield built
    built.local.close()


@pytest.fixture
def client(library: Library, tmp_path: Path) -> FlaskClient:
    return make_app(library, tmp_path / "thumbs").test_client()


@pytest.fixture
def token_app(library: Library, tmp_path: Path) -> Flask:
    return make_app(library, tmp_path / "thumbs", token=TOKEN)


def error_code(response: Any, status: int) -> str:
    assert response.status_code == status, response.data
    code: str = response.get_json()["error"]["code"]
    return code


def some_urls(library: Library) -> list[str]:
    image_id = library.ids["red.jpg"]
    return [
        "/healthz",
        "/api/status",
        "/api/search?q=x",
        f"/api/images/{image_id}",
        f"/api/images/{image_id}/similar",
        f"/thumb/{image_id}",
        f"/file/{image_id}",
        "/",
        "/login",
        "/opensearch.xml",
        "/openapi.json",
        "/static/icon.svg",
        "/nothing",
    ]


# -- Host ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:8756",
        "localhost.evil.example",
        "127.0.0.1.nip.io",
        "192.168.1.20:8756",
        "[::2]",
        "localhost:99999",
        "local host",
        "",
        "[::1",
    ],
)
def test_foreign_host_is_403_on_every_route(
    client: FlaskClient, library: Library, host: str
) -> None:
    for url in some_urls(library):
        response = client.get(url, headers={"Host": host})
        assert error_code(response, 403) == "forbidden_host", url


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "localhost:8756",
        "LOCALHOST:1234",
        "127.0.0.1",
        "127.0.0.1:8756",
        "[::1]",
        "[::1]:8756",
        "localhost.",
    ],
)
def test_loopback_hosts_on_any_port_are_accepted(client: FlaskClient, host: str) -> None:
    assert client.get("/healthz", headers={"Host": host}).status_code == 200


def test_allowed_hosts_from_the_config(library: Library, tmp_path: Path) -> None:
    client = make_app(
        library, tmp_path, allowed_hosts=("mypc.lan", "photos.home:9000", "fd00::5")
    ).test_client()
    assert client.get("/healthz", headers={"Host": "mypc.lan:8756"}).status_code == 200
    assert client.get("/healthz", headers={"Host": "photos.home:9000"}).status_code == 200
    assert client.get("/healthz", headers={"Host": "[fd00::5]:8756"}).status_code == 200
    wrong_port = client.get("/healthz", headers={"Host": "photos.home:9001"})
    assert error_code(wrong_port, 403) == "forbidden_host"
    assert (
        error_code(client.get("/healthz", headers={"Host": "other.lan"}), 403) == "forbidden_host"
    )


def test_the_address_bound_to_is_an_allowed_host() -> None:
    allowed = allowed_hosts(ServerConfig(host="192.168.1.5", token="t"))
    assert host_allowed("192.168.1.5:8756", allowed)
    assert not host_allowed("192.168.1.6:8756", allowed)
    # A wildcard bind names no host: only the loopback names pass.
    wildcard = allowed_hosts(ServerConfig(host="0.0.0.0", token="t"))
    assert not host_allowed("0.0.0.0:8756", wildcard)
    assert host_allowed("localhost", wildcard)


# -- Origin ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "null",
        "http://localhost.evil.example",
        "https://localhost",
        "http://localhost:9999",
        "http://127.0.0.1",
    ],
)
def test_state_changing_request_from_another_origin_is_403(
    client: FlaskClient, origin: str
) -> None:
    headers = {"Origin": origin, "Host": "localhost"}
    for response in (
        client.post("/api/search", json={"q": "x"}, headers=headers),
        client.post("/login", data={"token": "x"}, headers=headers),
        client.post("/logout", headers=headers),
    ):
        assert error_code(response, 403) == "forbidden_origin"


def test_same_origin_and_no_origin_posts_pass(client: FlaskClient) -> None:
    same = client.post(
        "/api/search",
        json={"q": "x"},
        headers={"Origin": "http://localhost:8756", "Host": "localhost:8756"},
    )
    assert same.status_code == 200
    assert client.post("/api/search", json={"q": "x"}).status_code == 200  # scripts send none


def test_reads_are_not_origin_checked(client: FlaskClient) -> None:
    response = client.get("/api/search?q=x", headers={"Origin": "http://evil.example"})
    assert response.status_code == 200


def test_origin_matching() -> None:
    assert origin_matches("http://localhost", "localhost:80", "http")
    assert origin_matches("http://[::1]:8756", "[::1]:8756", "http")
    assert not origin_matches("http://localhost:8756/path", "localhost:8756", "http")
    assert not origin_matches("http://[bad", "localhost", "http")


# -- token -----------------------------------------------------------------------------------------


def test_without_token_the_api_is_401(token_app: Flask, library: Library) -> None:
    client = token_app.test_client()
    for url in [
        "/api/status",
        "/api/search?q=x",
        f"/thumb/{library.ids['red.jpg']}",
        f"/file/{library.ids['red.jpg']}",
        "/openapi.json",
        "/nothing",
    ]:
        response = client.get(url)
        assert error_code(response, 401) == "unauthorized", url
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert error_code(client.post("/api/search", json={"q": "x"}), 401) == "unauthorized"


def test_wrong_token_is_401(token_app: Flask) -> None:
    client = token_app.test_client()
    for token in ["wrong", TOKEN + "x", TOKEN[:-1], "ünïcödé"]:
        response = client.get("/api/status", headers={"Authorization": f"Bearer {token}"})
        assert error_code(response, 401) == "unauthorized"
    client.set_cookie("wmpd_token", "wrong")
    assert error_code(client.get("/api/status"), 401) == "unauthorized"


def test_bearer_token_opens_the_api(token_app: Flask, library: Library) -> None:
    client = token_app.test_client()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/api/status", headers=headers).status_code == 200
    assert client.get("/api/search?q=x", headers=headers).status_code == 200
    assert client.get(f"/thumb/{library.ids['red.jpg']}", headers=headers).status_code == 200


def test_health_login_and_assets_need_no_token(token_app: Flask) -> None:
    client = token_app.test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/login").status_code == 200
    assert client.get("/static/icon.svg").status_code == 200


def test_the_page_redirects_to_login(token_app: Flask) -> None:
    client = token_app.test_client()
    response = client.get("/?q=cats")
    assert response.status_code == 303
    assert response.headers["Location"] == "/login?next=/%3Fq%3Dcats"
    assert client.get("/opensearch.xml").status_code == 303


def test_login_sets_a_strict_http_only_cookie(token_app: Flask) -> None:
    client = token_app.test_client()
    wrong = client.post("/login", data={"token": "guess"})
    assert wrong.status_code == 401
    assert wrong.mimetype == "text/html"
    assert "Set-Cookie" not in wrong.headers
    response = client.post("/login", data={"token": TOKEN, "next": "/?q=cats"})
    assert (response.status_code, response.headers["Location"]) == (303, "/?q=cats")
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("wmpd_token=")
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/" in cookie
    # The browser now sends the cookie: page and API open.
    assert client.get("/api/status").status_code == 200
    assert client.get("/").status_code == 200
    logout = client.post("/logout")
    assert (logout.status_code, logout.headers["Location"]) == (303, "/login")
    assert error_code(client.get("/api/status"), 401) == "unauthorized"


@pytest.mark.parametrize(
    "target", ["//evil.example/", "http://evil.example/", "/\\evil.example", "javascript:alert(1)"]
)
def test_login_never_redirects_off_site(token_app: Flask, target: str) -> None:
    response = token_app.test_client().post("/login", data={"token": TOKEN, "next": target})
    assert response.headers["Location"] == "/"


def test_token_is_compared_in_constant_time(token_app: Flask) -> None:
    compared: list[object] = []

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "c_call" and arg is hmac.compare_digest:
            compared.append(arg)

    client = token_app.test_client()
    sys.setprofile(profile)
    try:
        response = client.get("/api/status", headers={"Authorization": "Bearer wrong"})
    finally:
        sys.setprofile(None)
    assert response.status_code == 401
    assert compared, "the token check must go through hmac.compare_digest"


def test_token_matches() -> None:
    assert token_matches(TOKEN, TOKEN)
    assert token_matches("pässwörd", "pässwörd")
    assert not token_matches(None, TOKEN)
    assert not token_matches("", TOKEN)
    assert not token_matches("pässwörd", "passwort")


# -- path traversal --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "/file/..%2f..%2fetc%2fpasswd",
        "/file/../../etc/passwd",
        "/file/%2fetc%2fpasswd",
        "/file/1/../../../etc/passwd",
        "/thumb/..%2f..%2fetc%2fpasswd",
        "/thumb/-1",
        "/thumb/1%00",
        "/api/images/99999999999999999999",
        "/api/images/..%2f..%2fetc%2fpasswd",
        "/api/images/%2fetc%2fpasswd/similar",
        "/static/..%2f..%2f..%2fetc%2fpasswd",
        "/static/../../../../etc/passwd",
        "/static/%2fetc%2fpasswd",
    ],
)
def test_traversal_attempts_are_404_and_open_nothing(client: FlaskClient, url: str) -> None:
    with files_opened() as opened:
        response = client.get(url)
    assert error_code(response, 404) == "not_found"
    assert not [path for path in opened if "passwd" in path]


@pytest.mark.parametrize("path", ["/etc/passwd", "../../../../etc/passwd", "/etc/../etc/passwd"])
def test_search_by_uncatalogued_path_is_404_and_opens_nothing(
    client: FlaskClient, path: str
) -> None:
    with files_opened() as opened:
        response = client.post("/api/search", json={"path": path})
    assert error_code(response, 404) == "not_found"
    assert not [p for p in opened if "passwd" in p]


def test_uncatalogued_file_beside_the_photos_is_never_opened(
    client: FlaskClient, library: Library
) -> None:
    secret = library.photos / "secret.jpg"  # in a watched folder, but not (yet) catalogued
    secret.write_bytes(SECRET_TEXT)
    try:
        with files_opened() as opened:
            response = client.post("/api/search", json={"path": str(secret)})
        assert error_code(response, 404) == "not_found"
        assert str(secret) not in opened
    finally:
        secret.unlink()


def test_photo_swapped_for_a_link_to_a_secret_is_not_served(tmp_path: Path) -> None:
    library = build_library(tmp_path / "swapped")
    try:
        client = make_app(library, tmp_path / "thumbs").test_client()
        secret = tmp_path / "secret.txt"
        secret.write_bytes(SECRET_TEXT)
        photo = library.path("blue.png")
        photo.unlink()
        os.symlink(secret, photo)
        image_id = library.ids["blue.png"]
        for url in (f"/file/{image_id}", f"/thumb/{image_id}"):
            response = client.get(url)
            assert error_code(response, 404) == "not_found"
            assert SECRET_TEXT not in response.data
    finally:
        library.local.close()


# -- headers on every response ---------------------------------------------------------------------


def all_kinds_of_responses(client: FlaskClient, library: Library, token_app: Flask) -> list[Any]:
    image_id = library.ids["red.jpg"]
    thumb = client.get(f"/thumb/{image_id}")
    guarded = token_app.test_client()
    responses = [client.get(url) for url in some_urls(library)]
    responses += [
        client.get(f"/thumb/{image_id}", headers={"If-None-Match": thumb.headers["ETag"]}),
        client.get("/api/search?k=0&q=x"),
        client.delete("/api/search"),
        client.get("/healthz", headers={"Host": "evil.example"}),
        client.post("/logout", headers={"Origin": "http://evil.example"}),
        client.post("/api/search", json={"image_id": 987654}),
        client.get(f"/file/{image_id}", headers={"Range": "bytes=0-3"}),
        guarded.get("/api/status"),
        guarded.get("/"),
        guarded.post("/login", data={"token": "wrong"}),
        guarded.post("/login", data={"token": TOKEN}),
    ]
    return [thumb, *responses]


def test_security_headers_on_every_response(
    client: FlaskClient, library: Library, token_app: Flask
) -> None:
    responses = all_kinds_of_responses(client, library, token_app)
    statuses = {response.status_code for response in responses}
    assert {200, 206, 303, 304, 400, 401, 403, 404, 405} <= statuses
    for response in responses:
        headers = response.headers
        assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "same-origin"
        assert headers["X-Frame-Options"] == "DENY"
        response.close()


def test_csp_allows_only_own_scripts() -> None:
    directives = dict(part.strip().split(" ", 1) for part in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["default-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
