"""The JSON API, thumbnails, files and pages, through Flask's test client over a real library."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from tests.web_library import RED_TAKEN_AT, STATUS, Library, build_library, make_app
from wmpd.imaging import content_hash
from wmpd.web.openapi import openapi_document

HIT_KEYS = {
    "id",
    "path",
    "paths",
    "score",
    "width",
    "height",
    "taken_at",
    "format",
    "thumb_url",
    "file_url",
}
IMAGE_KEYS = {
    "id",
    "paths",
    "width",
    "height",
    "taken_at",
    "format",
    "hash",
    "thumb_url",
    "file_url",
}


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Library]:
    built = build_library(tmp_path_factory.mktemp("library"))
    yield built
    built.local.close()


@pytest.fixture
def app(library: Library, tmp_path: Path) -> Flask:
    return make_app(library, tmp_path / "thumbnails")


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.data
    assert response.mimetype == "application/json"
    error: dict[str, Any] = response.get_json()["error"]
    assert set(error) <= {"code", "message", "parameter"}
    assert error["message"]
    return error


# -- GET /api/search ---------------------------------------------------------------------------


def test_text_search_returns_every_image_as_hits(client: FlaskClient, library: Library) -> None:
    response = client.get("/api/search", query_string={"q": "a red square"})
    assert response.status_code == 200
    page = response.get_json()
    assert set(page) == {"results", "took_ms", "next"}
    assert page["next"] is None
    assert {hit["id"] for hit in page["results"]} == set(library.ids.values())
    for hit in page["results"]:
        assert set(hit) == HIT_KEYS
        assert hit["thumb_url"] == f"/thumb/{hit['id']}"
        assert hit["file_url"] == f"/file/{hit['id']}"
        assert hit["path"] == hit["paths"][0]
    scores = [hit["score"] for hit in page["results"]]
    assert scores == sorted(scores, reverse=True)


def test_text_search_pages(client: FlaskClient) -> None:
    everything = client.get("/api/search?q=photo&k=500").get_json()["results"]
    first = client.get("/api/search?q=photo&k=2").get_json()
    assert [h["id"] for h in first["results"]] == [h["id"] for h in everything[:2]]
    assert first["next"] == 2
    second = client.get("/api/search?q=photo&k=2&offset=2").get_json()
    assert [h["id"] for h in second["results"]] == [h["id"] for h in everything[2:4]]


def test_hit_carries_paths_capture_time_and_format(client: FlaskClient, library: Library) -> None:
    hits = client.get("/api/search?q=red&k=50").get_json()["results"]
    red = next(hit for hit in hits if hit["id"] == library.ids["red.jpg"])
    assert red["paths"] == sorted(
        [str(library.path("red.jpg")), str(library.path("sub/red-copy.jpg"))]
    )
    assert red["taken_at"] == RED_TAKEN_AT
    assert (red["width"], red["height"], red["format"]) == (96, 64, "JPEG")


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("", "q"),
        ("q=", "q"),
        ("q=%20%20", "q"),
        ("q=-people", "q"),
        ("q=x&k=0", "k"),
        ("q=x&k=501", "k"),
        ("q=x&k=ten", "k"),
        ("q=x&k=1.5", "k"),
        ("q=x&k=99999999999999999999999999", "k"),
        ("q=x&offset=-1", "offset"),
        ("q=x&offset=10001", "offset"),
        ("q=x&offset=", "offset"),
        ("q=x&min_score=2", "min_score"),
        ("q=x&min_score=nan", "min_score"),
        ("q=x&min_score=high", "min_score"),
        ("q=x&folder=relative/path", "folder"),
        ("q=x&folder=", "folder"),
        ("q=x&after=yesterday", "after"),
        ("q=x&after=1e400", "after"),
        ("q=x&before=2024-13-45", "before"),
        ("q=x&after=2024-05-02&before=2024-05-01", "before"),
        ("q=x&type=psd-ish", "type"),
        ("q=x&type=,,", "type"),
        ("q=x&limit=5", "limit"),
        ("q=x&k=1&k=2", "k"),
    ],
)
def test_bad_search_parameter_is_400_naming_it(
    client: FlaskClient, query: str, parameter: str
) -> None:
    error = error_of(client.get(f"/api/search?{query}"), 400)
    assert error == {"code": "bad_parameter", "parameter": parameter, "message": error["message"]}


def test_folder_filter_keeps_pictures_under_it(client: FlaskClient, library: Library) -> None:
    folder = library.path("sub")
    hits = client.get("/api/search", query_string={"q": "x", "folder": str(folder) + "/"})
    ids = {hit["id"] for hit in hits.get_json()["results"]}
    assert ids == {library.ids["sub/red-copy.jpg"], library.ids["sub/green.webp"]}


@pytest.mark.parametrize(
    ("types", "names"),
    [
        ("png", {"blue.png"}),
        ("PNG,webp", {"blue.png", "sub/green.webp"}),
        ("jpg", {"red.jpg", "big.jpg", "sideways.jpg"}),
    ],
)
def test_type_filter(client: FlaskClient, library: Library, types: str, names: set[str]) -> None:
    hits = client.get("/api/search", query_string={"q": "x", "type": types}).get_json()
    assert {hit["id"] for hit in hits["results"]} == {library.ids[name] for name in names}


@pytest.mark.parametrize(
    ("bounds", "found"),
    [
        ({"after": "2021-06-01"}, True),
        ({"after": "2021-06-01T12:00:01Z"}, False),
        ({"before": "2021-06-01T12:00:01+00:00"}, True),
        ({"before": "1622548800"}, False),  # exactly the capture time: before is exclusive
        ({"after": "1622548800", "before": "1622548801"}, True),
    ],
)
def test_capture_time_filter(
    client: FlaskClient, library: Library, bounds: dict[str, str], found: bool
) -> None:
    hits = client.get("/api/search", query_string={"q": "x", **bounds}).get_json()["results"]
    # Only the red photo has a capture time; the others never pass a time filter.
    assert [hit["id"] for hit in hits] == ([library.ids["red.jpg"]] if found else [])


def test_min_score_filter(client: FlaskClient) -> None:
    everything = client.get("/api/search?q=photo").get_json()["results"]
    cut = everything[1]["score"]
    kept = client.get(f"/api/search?q=photo&min_score={cut}").get_json()["results"]
    assert [hit["id"] for hit in kept] == [hit["id"] for hit in everything[:2]]
    assert client.get("/api/search?q=photo&min_score=1").get_json()["results"] == []


# -- POST /api/search ---------------------------------------------------------------------------


def upload(client: FlaskClient, data: bytes, **fields: str) -> Any:
    body: dict[str, Any] = {"image": (io.BytesIO(data), "query.jpg"), **fields}
    return client.post("/api/search", data=body, content_type="multipart/form-data")


def test_search_by_uploaded_picture_finds_it_first(client: FlaskClient, library: Library) -> None:
    response = upload(client, library.path("blue.png").read_bytes())
    assert response.status_code == 200
    best = response.get_json()["results"][0]
    assert best["id"] == library.ids["blue.png"]
    assert best["score"] == pytest.approx(1.0, abs=1e-4)


def test_upload_with_words_and_filters(client: FlaskClient, library: Library) -> None:
    data = library.path("blue.png").read_bytes()
    response = upload(client, data, q="a blue square", k="1", type="jpeg")
    page = response.get_json()
    assert response.status_code == 200
    assert len(page["results"]) == 1
    assert page["results"][0]["format"] == "JPEG"
    assert page["next"] == 1


def test_upload_with_empty_words_is_the_picture_alone(
    client: FlaskClient, library: Library
) -> None:
    data = library.path("blue.png").read_bytes()
    alone = upload(client, data).get_json()["results"]
    with_blank = upload(client, data, q="  ").get_json()["results"]
    assert [h["id"] for h in with_blank] == [h["id"] for h in alone]


@pytest.mark.parametrize(
    ("data", "fields", "parameter"),
    [
        (b"this is not a picture", {}, "image"),
        (b"", {}, "image"),
        (None, {"image": "text, not a file"}, "image"),
        (None, {}, "image"),
        (None, {"q": "x", "k": "0"}, "k"),
        (None, {"q": "x", "colour": "red"}, "colour"),
    ],
)
def test_bad_upload_is_400(
    client: FlaskClient, data: bytes | None, fields: dict[str, str], parameter: str
) -> None:
    body: dict[str, Any] = dict(fields)
    if data is not None:
        body["image"] = (io.BytesIO(data), "query.jpg")
    response = client.post("/api/search", data=body, content_type="multipart/form-data")
    assert error_of(response, 400)["parameter"] == parameter


def test_search_by_catalogued_image_id_and_path(client: FlaskClient, library: Library) -> None:
    image_id = library.ids["sideways.jpg"]
    by_id = client.post("/api/search", json={"image_id": image_id, "k": 3})
    by_path = client.post("/api/search", json={"path": str(library.path("sideways.jpg")), "k": 3})
    assert by_id.status_code == by_path.status_code == 200
    assert by_id.get_json()["results"][0]["id"] == image_id
    ids = [hit["id"] for hit in by_path.get_json()["results"]]
    assert ids == [hit["id"] for hit in by_id.get_json()["results"]]


def test_json_search_mixes_words_and_picture(client: FlaskClient, library: Library) -> None:
    body = {
        "image_id": library.ids["red.jpg"],
        "q": "a blue square",
        "type": ["png", "jpeg"],
        "after": 0,
        "min_score": -1,
    }
    response = client.post("/api/search", json=body)
    assert response.status_code == 200
    # Only the red photo has a capture time, so the `after` filter leaves it alone.
    assert [hit["id"] for hit in response.get_json()["results"]] == [library.ids["red.jpg"]]


@pytest.mark.parametrize(
    ("body", "parameter"),
    [
        ({}, "image_id"),
        ({"image_id": "seven"}, "image_id"),
        ({"image_id": -1}, "image_id"),
        ({"image_id": True}, "image_id"),
        ({"image_id": 1, "path": "/x.jpg"}, "path"),
        ({"path": 42}, "path"),
        ({"path": ""}, "path"),
        ({"image_id": 1, "k": "many"}, "k"),
        ({"image_id": 1, "k": 1.0}, "k"),
        ({"image_id": 1, "q": 5}, "q"),
        ({"image_id": 1, "type": 7}, "type"),
        ({"image_id": 1, "after": [2024]}, "after"),
        ({"image_id": 1, "nope": 1}, "nope"),
        ([1, 2], "body"),
    ],
)
def test_bad_json_search_is_400(client: FlaskClient, body: Any, parameter: str) -> None:
    assert error_of(client.post("/api/search", json=body), 400)["parameter"] == parameter


def test_unreadable_json_and_other_bodies_are_400(client: FlaskClient) -> None:
    broken = client.post("/api/search", data="{", content_type="application/json")
    assert error_of(broken, 400)["parameter"] == "body"
    text = client.post("/api/search", data="q=x", content_type="text/plain")
    assert error_of(text, 400)["parameter"] == "Content-Type"


def test_form_encoded_words_search(client: FlaskClient) -> None:
    response = client.post("/api/search", data={"q": "a dog", "k": "2"})
    assert response.status_code == 200
    assert len(response.get_json()["results"]) == 2


def test_unknown_image_id_and_path_are_404(client: FlaskClient, library: Library) -> None:
    unknown = client.post("/api/search", json={"image_id": 987654})
    assert error_of(unknown, 404)["code"] == "not_found"
    not_catalogued = library.photos / "not-indexed.jpg"
    missing = client.post("/api/search", json={"path": str(not_catalogued)})
    assert error_of(missing, 404)["code"] == "not_found"


def test_upload_over_the_limit_is_413(library: Library, tmp_path: Path) -> None:
    client = make_app(library, tmp_path, max_upload_bytes=2000).test_client()
    big = library.path("big.jpg").read_bytes()
    assert len(big) > 2000
    error = error_of(upload(client, big), 413)
    assert error["code"] == "payload_too_large"
    small = upload(client, library.path("blue.png").read_bytes())
    assert small.status_code == 200


def test_json_body_over_the_limit_is_413(library: Library, tmp_path: Path) -> None:
    client = make_app(library, tmp_path, max_upload_bytes=100).test_client()
    response = client.post("/api/search", json={"q": "x" * 200})
    assert error_of(response, 413)["code"] == "payload_too_large"


# -- while the model loads -------------------------------------------------------------------------


def test_search_while_the_model_loads_is_503(library: Library, tmp_path: Path) -> None:
    client = make_app(library, tmp_path, model_ready=False).test_client()
    image_id = library.ids["red.jpg"]
    responses = [
        client.get("/api/search?q=red"),
        client.post("/api/search", json={"image_id": image_id}),
        upload(client, library.path("blue.png").read_bytes()),
        client.get(f"/api/images/{image_id}/similar"),
    ]
    for response in responses:
        assert error_of(response, 503)["code"] == "model_loading"
        assert response.headers["Retry-After"].isdigit()
    # What needs no model still answers.
    assert client.get(f"/api/images/{image_id}").status_code == 200
    assert client.get("/api/status").status_code == 200
    assert client.get(f"/thumb/{image_id}").status_code == 200
    # A bad parameter is still named, model or not.
    assert error_of(client.get("/api/search?q=red&k=0"), 400)["parameter"] == "k"


# -- images ----------------------------------------------------------------------------------------


def test_image_details(client: FlaskClient, library: Library) -> None:
    image_id = library.ids["red.jpg"]
    response = client.get(f"/api/images/{image_id}")
    assert response.status_code == 200
    image = response.get_json()
    assert set(image) == IMAGE_KEYS
    assert image["id"] == image_id
    assert image["hash"] == content_hash(library.path("red.jpg").read_bytes())
    assert image["paths"] == sorted(
        [str(library.path("red.jpg")), str(library.path("sub/red-copy.jpg"))]
    )
    assert image["taken_at"] == RED_TAKEN_AT
    assert (image["thumb_url"], image["file_url"]) == (f"/thumb/{image_id}", f"/file/{image_id}")


def test_sideways_photo_reports_its_upright_size(client: FlaskClient, library: Library) -> None:
    image = client.get(f"/api/images/{library.ids['sideways.jpg']}").get_json()
    assert (image["width"], image["height"]) == (100, 200)


@pytest.mark.parametrize(
    "url",
    [
        "/api/images/987654",
        "/api/images/99999999999999999999",
        "/api/images/-1",
        "/api/images/abc",
        "/api/images/1.5",
        "/api/images/987654/similar",
    ],
)
def test_unknown_image_is_404(client: FlaskClient, url: str) -> None:
    assert error_of(client.get(url), 404)["code"] == "not_found"


def test_similar_excludes_the_image_itself(client: FlaskClient, library: Library) -> None:
    image_id = library.ids["blue.png"]
    response = client.get(f"/api/images/{image_id}/similar?k=10")
    assert response.status_code == 200
    ids = [hit["id"] for hit in response.get_json()["results"]]
    assert image_id not in ids
    assert set(ids) == set(library.ids.values()) - {image_id}
    one = client.get(f"/api/images/{image_id}/similar?k=1&offset=1").get_json()
    assert [hit["id"] for hit in one["results"]] == ids[1:2]


@pytest.mark.parametrize(
    ("query", "parameter"),
    [("k=0", "k"), ("offset=x", "offset"), ("q=red", "q"), ("type=nope", "type")],
)
def test_similar_bad_parameter_is_400(
    client: FlaskClient, library: Library, query: str, parameter: str
) -> None:
    response = client.get(f"/api/images/{library.ids['blue.png']}/similar?{query}")
    assert error_of(response, 400)["parameter"] == parameter


def test_image_details_takes_no_parameters(client: FlaskClient, library: Library) -> None:
    response = client.get(f"/api/images/{library.ids['blue.png']}?verbose=1")
    assert error_of(response, 400)["parameter"] == "verbose"


# -- status, health, errors ---------------------------------------------------------------------


def test_status_is_the_daemon_status(client: FlaskClient) -> None:
    response = client.get("/api/status")
    assert response.status_code == 200
    assert response.get_json() == STATUS
    assert response.headers["Cache-Control"] == "no-store"


def test_healthz(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert (response.status_code, response.get_json()) == (200, {"ok": True})


def test_a_failing_status_source_is_a_json_500(library: Library, tmp_path: Path) -> None:
    def broken_status() -> dict[str, Any]:
        raise RuntimeError("the worker is gone")

    client = make_app(library, tmp_path, status=broken_status).test_client()
    error = error_of(client.get("/api/status"), 500)
    assert error["code"] == "internal_error"
    assert "worker" not in error["message"]  # internals stay in the log


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("delete", "/api/search"),
        ("put", "/api/images/1"),
        ("get", "/logout"),
        ("post", "/healthz"),
        ("post", "/thumb/1"),
        ("patch", "/api/status"),
    ],
)
def test_wrong_method_is_405(client: FlaskClient, method: str, url: str) -> None:
    response = getattr(client, method)(url)
    assert error_of(response, 405)["code"] == "method_not_allowed"
    assert response.headers["Allow"]


@pytest.mark.parametrize("url", ["/nothing", "/api", "/api/search/extra", "/static/nope.js"])
def test_unknown_url_is_json_404(client: FlaskClient, url: str) -> None:
    assert error_of(client.get(url), 404)["code"] == "not_found"


# -- thumbnails ------------------------------------------------------------------------------------


def thumb_size(response: Any) -> tuple[int, int]:
    assert response.status_code == 200, response.data
    assert response.mimetype == "image/jpeg"
    with Image.open(io.BytesIO(response.data)) as image:
        assert image.format == "JPEG"
        return image.size


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (None, (320, 240)),
        ("200", (200, 150)),
        ("5000", (1024, 768)),
        ("1", (64, 48)),
        ("-7", (64, 48)),
        ("1024", (1024, 768)),
    ],
)
def test_thumbnail_size_is_clamped(
    client: FlaskClient, library: Library, size: str | None, expected: tuple[int, int]
) -> None:
    query = {} if size is None else {"size": size}
    response = client.get(f"/thumb/{library.ids['big.jpg']}", query_string=query)
    assert thumb_size(response) == expected


def test_thumbnail_never_enlarges(client: FlaskClient, library: Library) -> None:
    assert thumb_size(client.get(f"/thumb/{library.ids['blue.png']}?size=512")) == (64, 64)


@pytest.mark.parametrize("size", ["big", "1.5", "", "99999999999999999999999"])
def test_bad_thumbnail_size_is_400(client: FlaskClient, library: Library, size: str) -> None:
    response = client.get(f"/thumb/{library.ids['big.jpg']}", query_string={"size": size})
    assert error_of(response, 400)["parameter"] == "size"


def test_thumbnail_applies_exif_orientation(client: FlaskClient, library: Library) -> None:
    response = client.get(f"/thumb/{library.ids['sideways.jpg']}?size=100")
    assert thumb_size(response) == (50, 100)
    with Image.open(io.BytesIO(response.data)) as image:
        top, bottom = image.convert("L").getpixel((25, 10)), image.convert("L").getpixel((25, 90))
    # The black half is on top, as a viewer shows the photo.
    assert isinstance(top, int)
    assert isinstance(bottom, int)
    assert top < 40
    assert bottom > 215


def test_thumbnail_is_cached_on_disk_and_served_from_there(
    library: Library, tmp_path: Path
) -> None:
    client = make_app(library, tmp_path / "thumbs").test_client()
    image_id = library.ids["blue.png"]
    image_hash = content_hash(library.path("blue.png").read_bytes())
    cached = tmp_path / "thumbs" / image_hash[:2] / f"{image_hash}-100.jpg"
    assert not cached.exists()
    first = client.get(f"/thumb/{image_id}?size=100")
    assert first.status_code == 200
    assert cached.read_bytes() == first.data
    # The cache is what answers: a marker written into it comes back.
    cached.write_bytes(first.data + b"cache")
    again = client.get(f"/thumb/{image_id}?size=100")
    assert again.data == first.data + b"cache"


def test_thumbnail_etag_and_304(client: FlaskClient, library: Library) -> None:
    image_id = library.ids["big.jpg"]
    first = client.get(f"/thumb/{image_id}?size=128")
    image_hash = content_hash(library.path("big.jpg").read_bytes())
    assert first.headers["ETag"] == f'"{image_hash}-128"'
    cache_control = first.headers["Cache-Control"]
    assert {part.strip() for part in cache_control.split(",")} == {
        "public",
        "max-age=31536000",
        "immutable",
    }
    again = client.get(
        f"/thumb/{image_id}?size=128", headers={"If-None-Match": first.headers["ETag"]}
    )
    assert again.status_code == 304
    assert again.data == b""
    assert again.headers["ETag"] == first.headers["ETag"]
    other_size = client.get(
        f"/thumb/{image_id}?size=129", headers={"If-None-Match": first.headers["ETag"]}
    )
    assert other_size.status_code == 200


@pytest.mark.parametrize(
    "url", ["/thumb/987654", "/thumb/-1", "/thumb/x", "/thumb/99999999999999999999"]
)
def test_unknown_thumbnail_is_404(client: FlaskClient, url: str) -> None:
    assert error_of(client.get(url), 404)["code"] == "not_found"


# -- original files --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "mimetype"),
    [("red.jpg", "image/jpeg"), ("blue.png", "image/png"), ("sub/green.webp", "image/webp")],
)
def test_file_is_the_original_bytes(
    client: FlaskClient, library: Library, name: str, mimetype: str
) -> None:
    response = client.get(f"/file/{library.ids[name]}")
    assert response.status_code == 200
    assert response.mimetype == mimetype
    original = library.path(name).read_bytes()
    assert response.data == original
    assert response.headers["Content-Length"] == str(len(original))
    response.close()


def test_file_conditional_and_range_requests(client: FlaskClient, library: Library) -> None:
    url = f"/file/{library.ids['big.jpg']}"
    first = client.get(url)
    etag = first.headers["ETag"]
    first.close()
    not_modified = client.get(url, headers={"If-None-Match": etag})
    assert not_modified.status_code == 304
    part = client.get(url, headers={"Range": "bytes=0-9"})
    assert part.status_code == 206
    assert part.data == library.path("big.jpg").read_bytes()[:10]
    part.close()
    outside = client.get(url, headers={"Range": "bytes=99999999-"})
    assert outside.status_code == 416


@pytest.mark.parametrize("url", ["/file/987654", "/file/-1", "/file/99999999999999999999"])
def test_unknown_file_is_404(client: FlaskClient, url: str) -> None:
    assert error_of(client.get(url), 404)["code"] == "not_found"


def test_file_changed_since_indexing_is_not_served(
    client: FlaskClient, library: Library, tmp_path: Path
) -> None:
    # A second, private library: this test edits a photo.
    other = build_library(tmp_path / "edited")
    try:
        app_client = make_app(other, tmp_path / "thumbs").test_client()
        image_id = other.ids["blue.png"]
        path = other.path("blue.png")
        Image.new("RGB", (64, 64), (250, 250, 0)).save(path)
        assert error_of(app_client.get(f"/file/{image_id}"), 404)["code"] == "not_found"
        assert error_of(app_client.get(f"/thumb/{image_id}"), 404)["code"] == "not_found"
        # The copy of the red photo still serves when its first path is gone.
        red_id = other.ids["red.jpg"]
        os.remove(other.path("red.jpg"))
        response = app_client.get(f"/file/{red_id}")
        assert response.data == other.path("sub/red-copy.jpg").read_bytes()
        response.close()
    finally:
        other.local.close()


# -- pages and the OpenAPI document -------------------------------------------------------------


def test_search_page(client: FlaskClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert response.headers["Cache-Control"] == "no-store"
    if (Path(__file__).parents[1] / "wmpd/web/templates/index.html").exists():
        assert b'<script src="/static/app.js"' in response.data


def test_page_assets_are_served(client: FlaskClient) -> None:
    static = Path(__file__).parents[1] / "wmpd" / "web" / "static"
    for asset in sorted(static.iterdir()) if static.is_dir() else []:
        response = client.get(f"/static/{asset.name}")
        assert response.status_code == 200
        assert response.data == asset.read_bytes()
        response.close()


def test_opensearch_description(client: FlaskClient) -> None:
    response = client.get("/opensearch.xml", base_url="http://localhost:8756")
    assert response.status_code == 200
    assert response.mimetype == "application/opensearchdescription+xml"
    assert b'template="http://localhost:8756/?q={searchTerms}"' in response.data
    assert b'template="http://localhost:8756/api/search?q={searchTerms}"' in response.data


def test_pages_answer_without_their_templates(library: Library, tmp_path: Path) -> None:
    app = make_app(library, tmp_path / "thumbs", token="t0ken")
    app.template_folder = str(tmp_path / "no-templates")  # as if the page were not installed
    client = app.test_client()
    login = client.get("/login")
    assert login.status_code == 200
    assert b'name="token"' in login.data
    wrong = client.post("/login", data={"token": "<b>guess</b>"})
    assert wrong.status_code == 401
    assert b"<b>guess" not in wrong.data
    assert client.post("/login", data={"token": "t0ken"}).status_code == 303
    page = client.get("/")
    assert page.status_code == 200
    assert b"The search page is not installed" in page.data


def test_login_without_a_token_configured_goes_to_the_page(client: FlaskClient) -> None:
    response = client.get("/login")
    assert (response.status_code, response.headers["Location"]) == (303, "/")


def test_openapi_lists_exactly_the_routes(app: Flask, client: FlaskClient) -> None:
    document = client.get("/openapi.json").get_json()
    assert document == openapi_document()
    assert document["openapi"].startswith("3.1")
    documented = {
        (path, method.upper())
        for path, operations in document["paths"].items()
        for method in operations
    }
    routed = set()
    for rule in app.url_map.iter_rules():
        path = rule.rule.replace("<image_id:image_id>", "{image_id}")
        path = path.replace("<path:filename>", "{filename}")
        for method in rule.methods or ():
            if method not in {"HEAD", "OPTIONS"}:
                routed.add((path, method))
    assert documented == routed


def test_openapi_documents_every_parameter_the_routes_read(client: FlaskClient) -> None:
    document = client.get("/openapi.json").get_json()
    names = {p["name"] for p in document["paths"]["/api/search"]["get"]["parameters"]}
    assert names == {"q", "k", "offset", "min_score", "folder", "after", "before", "type"}
    error = document["components"]["schemas"]["Error"]
    assert error["properties"]["error"]["required"] == ["code", "message"]
