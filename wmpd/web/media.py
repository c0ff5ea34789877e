"""The "media" blueprint: thumbnails and original files, only of catalogued images."""

from __future__ import annotations

import logging
import mimetypes
import os

from flask import Blueprint, Response, request, send_file
from PIL import Image
from werkzeug.wrappers import Response as BaseResponse

from wmpd.catalog import Catalog, ImageRow
from wmpd.errors import ImageError
from wmpd.web.context import web_context
from wmpd.web.params import read_int, single_values
from wmpd.web.problems import not_found
from wmpd.web.thumbs import DEFAULT_THUMB_SIZE, clamp_size, open_original

logger = logging.getLogger(__name__)

blueprint = Blueprint("media", __name__)

THUMB_MAX_AGE_SECONDS = 365 * 24 * 3600
_ANY_SIZE = 2**31


@blueprint.get("/thumb/<image_id:image_id>")
def thumbnail(image_id: int) -> BaseResponse:
    values = single_values(request.args, ("size",))
    # Out-of-range sizes are clamped, not refused: a launcher asking for 2000 gets 1024.
    size = clamp_size(read_int(values, "size", DEFAULT_THUMB_SIZE, -_ANY_SIZE, _ANY_SIZE))
    context = web_context()
    catalog = context.searcher.catalog()
    image = _visible_image(catalog, image_id)
    etag = f"{image.hash}-{size}"
    if request.if_none_match.contains(etag):
        return _thumbnail_response(b"", etag, 304)  # the browser has it: skip making it
    try:
        data = context.thumbnails.thumbnail(image.hash, size, catalog.paths_of_image(image_id))
    except LookupError as exc:
        raise not_found(f"no thumbnail for image {image_id}: {exc}") from None
    except ImageError as exc:
        logger.warning("cannot make a thumbnail of %s: %s", exc.path, exc.detail)
        raise not_found(f"no thumbnail for image {image_id}: {exc.reason}") from None
    return _thumbnail_response(data, etag, 200)


@blueprint.get("/file/<image_id:image_id>")
def original(image_id: int) -> BaseResponse:
    single_values(request.args, ())
    catalog = web_context().searcher.catalog()
    image = _visible_image(catalog, image_id)
    opened = open_original(catalog, image_id)
    if opened is None:
        raise not_found(f"the file of image {image_id} is gone or changed since it was indexed")
    try:
        response = send_file(
            opened.file,
            mimetype=_mimetype(image.format, opened.path),
            download_name=_header_safe_name(os.path.basename(opened.path)),
            conditional=False,
            etag=image.hash,
            last_modified=opened.mtime,
        )
        response.content_length = opened.size
        return response.make_conditional(request, accept_ranges=True, complete_length=opened.size)
    except BaseException:
        opened.file.close()
        raise


def _visible_image(catalog: Catalog, image_id: int) -> ImageRow:
    image = catalog.image(image_id)
    if image is None or image.orphaned:
        raise not_found(f"no image with id {image_id}")
    return image


def _thumbnail_response(data: bytes, etag: str, status: int) -> Response:
    response = Response(data, status=status, mimetype="image/jpeg")
    response.set_etag(etag)
    response.cache_control.public = True
    response.cache_control.max_age = THUMB_MAX_AGE_SECONDS
    response.cache_control.immutable = True
    return response


def _mimetype(image_format: str | None, path: str) -> str:
    if image_format == "MPO":
        return "image/jpeg"  # a JPEG with extra frames; browsers show its first
    Image.init()
    known = Image.MIME.get(image_format) if image_format else None
    return known or mimetypes.guess_type(path)[0] or "application/octet-stream"


def _header_safe_name(name: str) -> str:
    """The file name for Content-Disposition: control characters (a newline is legal in
    a Unix file name) cannot go in a header, so they become spaces."""
    return "".join(" " if ord(ch) < 32 or ord(ch) == 127 else ch for ch in name) or "picture"
