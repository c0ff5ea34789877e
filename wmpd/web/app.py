"""The application factory: one Flask app per call, wired from what the daemon passes in."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask
from werkzeug.routing import BaseConverter, ValidationError

from wmpd.config import ServerConfig
from wmpd.search import Searcher
from wmpd.web import api, media, ui
from wmpd.web.context import WebContext, attach_context
from wmpd.web.params import MAX_IMAGE_ID
from wmpd.web.problems import register_error_handlers
from wmpd.web.security import install_security
from wmpd.web.thumbs import ThumbnailCache

logger = logging.getLogger(__name__)


class ImageIdConverter(BaseConverter):
    """A catalog row id: digits only, within SQLite's INTEGER range (else the route is a 404)."""

    regex = r"\d{1,19}"

    def to_python(self, value: str) -> int:
        number = int(value)
        if number > MAX_IMAGE_ID:
            raise ValidationError()
        return number

    def to_url(self, value: Any) -> str:
        return str(int(value))


def create_app(
    searcher: Searcher,
    status: Callable[[], dict[str, Any]],
    model_ready: Callable[[], bool],
    server: ServerConfig,
    thumbnails_dir: Path,
    max_image_pixels: int,
    max_file_bytes: int,
) -> Flask:
    """The web app: search page and JSON API over `searcher`; nothing global is touched."""
    app = Flask(__name__, static_folder="static", template_folder="templates")
    # Uploads (search by picture) are the only large bodies; Flask answers 413 beyond this.
    app.config["MAX_CONTENT_LENGTH"] = server.max_upload_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    thumbnails = ThumbnailCache(thumbnails_dir, max_image_pixels, max_file_bytes)
    attach_context(app, WebContext(searcher, status, model_ready, server, thumbnails))
    app.url_map.converters["image_id"] = ImageIdConverter
    # A doubled slash is a 404, not a redirect to a different path: fewer ways to name a file.
    app.url_map.merge_slashes = False
    install_security(app, server)
    register_error_handlers(app)
    for blueprint in (api.blueprint, media.blueprint, ui.blueprint):
        app.register_blueprint(blueprint)
    logger.debug("web app created (token %s)", "required" if server.token else "not required")
    return app
