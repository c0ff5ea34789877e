"""Running the app under waitress: bind early with clear errors, serve in a thread, stop cleanly.

The listening sockets are bound here rather than by waitress, so that a taken port is a
WmpdError with advice (before any server thread starts), and so that "localhost" on port 0
gets the same free port on IPv4 and IPv6.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import threading
import time
from typing import Any

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer, create_server

from wmpd.config import ServerConfig
from wmpd.errors import WmpdError

logger = logging.getLogger(__name__)

DEFAULT_THREADS = 8
LOOP_TIMEOUT_SECONDS = 1.0
DRAIN_SECONDS = 5.0
# Bodies beyond the app's own upload limit are refused by waitress itself (a plain-text
# 413), so that a huge body is not first spooled to disk; the slack keeps the JSON 413 for
# anything near the limit.
BODY_LIMIT_SLACK_BYTES = 1 << 20
_WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]", "*"})


def check_bind_allowed(server: ServerConfig) -> None:
    """Refuse to listen beyond this computer without a token."""
    if server.token is None and not is_loopback_host(server.host):
        raise WmpdError(
            f"binding {server.host} exposes your photos to the network; set server.token first"
        )


def is_loopback_host(host: str) -> bool:
    bare = host.strip().strip("[]").lower()
    if bare == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def start_server(app: Any, server: ServerConfig, threads: int = DEFAULT_THREADS) -> HttpServer:
    """Check, bind and start serving in a daemon thread; what the daemon calls."""
    check_bind_allowed(server)
    http = HttpServer(
        app,
        server.host,
        server.port,
        threads,
        max_request_body_bytes=server.max_upload_bytes + BODY_LIMIT_SLACK_BYTES,
    )
    http.start()
    http.serve_forever()
    return http


class HttpServer:
    """One waitress server for one WSGI app; start() binds, serve_forever() serves."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        threads: int = DEFAULT_THREADS,
        *,
        max_request_body_bytes: int | None = None,
    ) -> None:
        self.app = app
        self.host = host
        self._requested_port = port
        self._threads = threads
        self._body_limit = max_request_body_bytes
        self._map: dict[int, Any] = {}
        self._server: Any = None
        self._sockets: list[socket.socket] = []
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._stopped = threading.Event()

    @property
    def port(self) -> int:
        """The port listened on (a free one when asked for port 0); valid after start()."""
        if not self._sockets:
            raise RuntimeError("the server is not started")
        return int(self._sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host.strip() in _WILDCARDS else self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        """Bind now; raises WmpdError saying what to change when the address is unusable."""
        self._sockets = bind_sockets(self.host, self._requested_port)
        options: dict[str, Any] = {
            "threads": self._threads,
            "ident": "wmpd",
            "clear_untrusted_proxy_headers": True,
        }
        if self._body_limit is not None:
            options["max_request_body_size"] = self._body_limit
        self._server = create_server(self.app, map=self._map, sockets=self._sockets, **options)
        logger.info("listening on %s", self.url)

    def serve_forever(self) -> threading.Thread:
        """Serve in a daemon thread; returns at once with that thread (stop() ends it)."""
        if self._server is None:
            raise RuntimeError("call start() first")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="wmpd-http", daemon=True)
            self._thread.start()
        return self._thread

    def stop(self, timeout: float = DRAIN_SECONDS + 2) -> None:
        """Stop accepting, let requests in flight finish (a few seconds at most), close."""
        if self._server is None:
            return
        self._stopping.set()
        if self._thread is not None and self._thread.is_alive():
            self._wake_loop()
            self._thread.join(timeout)
        else:
            self._close_all()
        self._server = None

    def _run(self) -> None:
        # The loop runs a step at a time so that stop() can end it; all socket work, the
        # shutdown included, happens on this one thread, as asyncore wants.
        try:
            while not self._stopping.is_set():
                wasyncore.loop(LOOP_TIMEOUT_SECONDS, True, self._map, 1)
            self._stop_listening()
            self._drain(time.monotonic() + DRAIN_SECONDS)
        except Exception:
            logger.exception("the HTTP server loop failed")
        finally:
            self._close_all()

    def _wake_loop(self) -> None:
        for dispatcher in list(self._map.values()):
            if isinstance(dispatcher, BaseWSGIServer):
                dispatcher.pull_trigger()
                return

    def _stop_listening(self) -> None:
        for dispatcher in list(self._map.values()):
            if isinstance(dispatcher, BaseWSGIServer):
                # Only the listening socket: the trigger still wakes us while requests finish.
                wasyncore.dispatcher.close(dispatcher)

    def _drain(self, deadline: float) -> None:
        while time.monotonic() < deadline and any(
            isinstance(d, HTTPChannel) and (d.requests or d.total_outbufs_len)
            for d in list(self._map.values())
        ):
            wasyncore.loop(0.05, True, self._map, 1)

    def _close_all(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        wasyncore.close_all(self._map)
        for sock in self._sockets:
            sock.close()
        if self._server is not None:
            self._server.task_dispatcher.shutdown(timeout=DRAIN_SECONDS)
        logger.info("stopped listening")


def bind_sockets(host: str, port: int) -> list[socket.socket]:
    """Listening-ready sockets for every address of host, all on one port."""
    addresses = _resolve(host, port)
    sockets: list[socket.socket] = []
    try:
        for family, address in addresses:
            if sockets and port == 0:
                # The first socket chose a free port: the others take the same one.
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sockets.append(_bind_one(family, address, host, port))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _resolve(host: str, port: int) -> list[tuple[int, tuple[Any, ...]]]:
    bare = host.strip().strip("[]") or None
    try:
        found = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise WmpdError(f"cannot listen on {host}: {exc.strerror}; check server.host") from exc
    unique: list[tuple[int, tuple[Any, ...]]] = []
    for family, _, _, _, address in found:
        if family in (socket.AF_INET, socket.AF_INET6) and (family, address) not in unique:
            unique.append((family, address))
    return unique


def _bind_one(family: int, address: tuple[Any, ...], host: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # Reuse a port left in TIME_WAIT by a previous run (it does not allow two listeners).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise WmpdError(_bind_failure(exc, host, port)) from exc
    return sock


def _bind_failure(exc: OSError, host: str, port: int) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} is in use: is another wmpd running? set server.port"
    if exc.errno == errno.EACCES:
        return f"not allowed to listen on port {port} (ports below 1024 need root); set server.port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {host}: this computer has no such address; check server.host"
    return f"cannot listen on {host} port {port}: {exc.strerror or exc}"
