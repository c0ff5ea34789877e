"""What every view needs, built once by the factory and kept on the Flask app."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app

from wmpd.config import ServerConfig
from wmpd.search import Searcher
from wmpd.web.thumbs import ThumbnailCache

EXTENSION_KEY = "wmpd"


@dataclass(frozen=True)
class WebContext:
    searcher: Searcher
    status: Callable[[], dict[str, Any]]
    model_ready: Callable[[], bool]
    server: ServerConfig
    thumbnails: ThumbnailCache


def attach_context(app: Flask, context: WebContext) -> None:
    app.extensions[EXTENSION_KEY] = context


def web_context() -> WebContext:
    """The context of the app serving the current request."""
    context: WebContext = current_app.extensions[EXTENSION_KEY]
    return context
