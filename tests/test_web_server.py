"""The real waitress server: free ports, answering over TCP, refusing taken ports and open binds."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.web_library import Library, build_library, make_app
from wmpd.config import ServerConfig
from wmpd.errors import WmpdError
from wmpd.web import HttpServer, check_bind_allowed, start_server
from wmpd.web.server import bind_sockets


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Library]:
    built = build_library(tmp_path_factory.mktemp("library"))
    yield built
    built.local.close()


@pytest.fixture
def running(library: Library, tmp_path: Path) -> Iterator[HttpServer]:
    server = HttpServer(make_app(library, tmp_path / "thumbs"), "127.0.0.1", 0, threads=2)
    server.start()
    server.serve_forever()
    yield server
    server.stop()


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def get_json(port: int, path: str) -> tuple[int, Any]:
    status, _, body = request(port, "GET", path)
    return status, json.loads(body)


def test_free_port_is_chosen_and_reported(running: HttpServer) -> None:
    assert running.port > 0
    assert running.url == f"http://127.0.0.1:{running.port}"


def test_healthz_over_tcp(running: HttpServer) -> None:
    status, headers, body = request(running.port, "GET", "/healthz")
    assert (status, json.loads(body)) == (200, {"ok": True})
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Server"] == "wmpd"


def test_search_over_tcp(running: HttpServer, library: Library) -> None:
    status, page = get_json(running.port, "/api/search?q=a%20red%20square&k=3")
    assert status == 200
    assert len(page["results"]) == 3
    body = json.dumps({"image_id": library.ids["blue.png"], "k": 1}).encode()
    status, _, raw = request(
        running.port, "POST", "/api/search", body, {"Content-Type": "application/json"}
    )
    assert status == 200
    assert [hit["id"] for hit in json.loads(raw)["results"]] == [library.ids["blue.png"]]


def test_file_over_tcp_is_the_original(running: HttpServer, library: Library) -> None:
    status, headers, body = request(running.port, "GET", f"/file/{library.ids['big.jpg']}")
    assert status == 200
    assert headers["Content-Type"] == "image/jpeg"
    assert body == library.path("big.jpg").read_bytes()


def test_host_check_applies_over_tcp(running: HttpServer) -> None:
    status, _, body = request(running.port, "GET", "/healthz", headers={"Host": "evil.example"})
    assert status == 403
    assert json.loads(body)["error"]["code"] == "forbidden_host"


def test_port_in_use_is_a_clear_error(library: Library, tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        server = HttpServer(make_app(library, tmp_path), "127.0.0.1", port)
        with pytest.raises(WmpdError) as caught:
            server.start()
        assert str(caught.value) == (
            f"port {port} is in use: is another wmpd running? set server.port"
        )
    finally:
        holder.close()


def test_second_server_on_the_same_port_is_refused(
    running: HttpServer, library: Library, tmp_path: Path
) -> None:
    second = HttpServer(make_app(library, tmp_path), "127.0.0.1", running.port)
    with pytest.raises(WmpdError, match="is in use"):
        second.start()
    # The first one is unharmed.
    assert get_json(running.port, "/healthz") == (200, {"ok": True})


def test_stop_closes_the_port(library: Library, tmp_path: Path) -> None:
    server = HttpServer(make_app(library, tmp_path), "127.0.0.1", 0, threads=1)
    server.start()
    thread = server.serve_forever()
    port = server.port
    assert get_json(port, "/healthz")[0] == 200
    server.stop()
    assert not thread.is_alive()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    # The port is free again for a new server.
    again = HttpServer(make_app(library, tmp_path), "127.0.0.1", port, threads=1)
    again.start()
    again.stop()


def test_stop_before_serving_releases_the_port(library: Library, tmp_path: Path) -> None:
    server = HttpServer(make_app(library, tmp_path), "127.0.0.1", 0, threads=1)
    server.start()
    port = server.port
    server.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_start_server_serves_the_config(library: Library, tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    holder.close()
    config = ServerConfig(host="127.0.0.1", port=port, max_upload_bytes=1000)
    server = start_server(make_app(library, tmp_path, max_upload_bytes=1000), config, threads=1)
    try:
        assert get_json(port, "/healthz") == (200, {"ok": True})
        # Within the slack: the app's own JSON 413. Far beyond it: waitress refuses the body.
        status, _, body = request(
            port,
            "POST",
            "/api/search",
            b"{" + b" " * 5000 + b"}",
            {"Content-Type": "application/json"},
        )
        assert (status, json.loads(body)["error"]["code"]) == (413, "payload_too_large")
        huge = b" " * (1000 + (1 << 20) + 10)
        try:
            status, _, _ = request(
                port, "POST", "/api/search", huge, {"Content-Type": "application/json"}
            )
        except (BrokenPipeError, ConnectionResetError):
            # waitress answered 413 and closed before the client finished sending: the
            # body was refused either way, which is what matters.
            status = 413
        assert status == 413
        assert get_json(port, "/healthz")[0] == 200
    finally:
        server.stop()


def test_localhost_on_port_zero_uses_one_port_for_every_address() -> None:
    sockets = bind_sockets("localhost", 0)
    try:
        ports = {sock.getsockname()[1] for sock in sockets}
        assert len(ports) == 1
        families = {sock.family for sock in sockets}
        assert socket.AF_INET in families
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "photos.example", ""])
def test_network_bind_without_token_is_refused(host: str) -> None:
    with pytest.raises(WmpdError) as caught:
        check_bind_allowed(ServerConfig(host=host))
    assert str(caught.value) == (
        f"binding {host} exposes your photos to the network; set server.token first"
    )


def test_start_server_refuses_before_binding(library: Library, tmp_path: Path) -> None:
    config = ServerConfig(host="0.0.0.0", port=0)
    with pytest.raises(WmpdError, match=r"binding 0\.0\.0\.0 exposes your photos to the network"):
        start_server(make_app(library, tmp_path), config)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"])
def test_loopback_bind_needs_no_token(host: str) -> None:
    check_bind_allowed(ServerConfig(host=host))


def test_network_bind_with_token_is_allowed() -> None:
    check_bind_allowed(ServerConfig(host="0.0.0.0", token="s3cret"))


def test_unknown_host_name_is_a_clear_error(library: Library, tmp_path: Path) -> None:
    server = HttpServer(make_app(library, tmp_path), "no-such-host.invalid", 0)
    with pytest.raises(WmpdError, match=r"cannot listen on no-such-host\.invalid"):
        server.start()
