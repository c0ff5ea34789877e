"""The HTTP side of wmpd: the Flask app factory and the waitress server that runs it."""

from __future__ import annotations

from wmpd.web.app import create_app
from wmpd.web.server import HttpServer, check_bind_allowed, start_server

__all__ = ["HttpServer", "check_bind_allowed", "create_app", "start_server"]
