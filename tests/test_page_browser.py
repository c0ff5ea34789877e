"""The search page in headless Chromium, against a real server on a real indexed library.

Screenshots land in test-artifacts/ (git-ignored) so that a person can look at the page in
light and dark mode, on a desktop and on a phone-sized window.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.models.scenes import all_combos, render_scene
from wmpd.config import Config
from wmpd.library import LocalSearch, open_local_search, run_index

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
WAIT_MS = 20_000
PAGE_SIZE = 48  # the page's own page size (app.js)
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# (colour, shape, background): one picture each, named colour-shape.png
SCENES = [
    ("red", "circle", "white"),
    ("blue", "square", "sky"),
    ("yellow", "star", "grass"),
    ("green", "triangle", "white"),
    ("purple", "heart", "sky"),
    ("orange", "circle", "grass"),
    ("pink", "star", "white"),
    ("brown", "square", "grass"),
    ("blue", "heart", "white"),
    ("red", "triangle", "sky"),
    ("yellow", "circle", "white"),
    ("green", "star", "sky"),
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"{CHROMIUM} is not installed (apt-get install -y chromium)",
    ),
]


def indexing_status(**changes: Any) -> dict[str, Any]:
    """A daemon status as GET /api/status returns it, part-way through indexing."""
    status: dict[str, Any] = {
        "state": "indexing",
        "state_detail": None,
        "version": "0.1.0",
        "uptime_seconds": 42.0,
        "model_id": "tiny-clip",
        "model_ready": True,
        "images": len(SCENES),
        "paths": len(SCENES),
        "failed": 0,
        "failures": {},
        "recent_failures": [],
        "queue": 3766,
        "progress": {"done": 1234, "total": 5000, "rate": 12.3, "eta_seconds": 360.0},
        "roots": [
            {"path": "/home/me/Pictures", "state": "watching", "detail": None},
            {"path": "/media/backup/Photos", "state": "offline", "detail": "not mounted"},
        ],
        "index_size": len(SCENES),
        "index_consistent": True,
        "warnings": [],
    }
    status.update(changes)
    return status


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def library(
    request: pytest.FixtureRequest, make_config: Callable[..., Config], photos_dir: Path
) -> Iterator[tuple[Config, LocalSearch]]:
    """SCENES as colour-shape.png; a test may ask for more pictures (indirect parameter)."""
    count = getattr(request, "param", len(SCENES))
    rng = random.Random(20240501)
    for colour, shape, background in SCENES:
        aspect = rng.choice((1.0, 4 / 3, 3 / 4))
        image = render_scene(colour, shape, background, 384, rng, aspect=aspect)
        image.save(photos_dir / f"{colour}-{shape}.png")
    for index, (colour, shape, background) in enumerate(all_combos()[: count - len(SCENES)]):
        image = render_scene(colour, shape, background, 128, rng)
        image.save(photos_dir / f"more-{index}-{colour}-{shape}.jpg", quality=85)
    config = make_config(photos_dir)
    run_index(config)
    local = open_local_search(config)
    yield config, local
    local.close()


@pytest.fixture
def status() -> dict[str, Any]:
    """What the server reports as the daemon status; a test may change it in place."""
    return indexing_status()


@pytest.fixture
def server(library: tuple[Config, LocalSearch], status: dict[str, Any]) -> Iterator[Any]:
    from wmpd.web import create_app
    from wmpd.web.server import HttpServer

    config, local = library
    app = create_app(
        local.searcher,
        status=lambda: dict(status),
        # The status drives readiness too, so a test can "finish loading" the model.
        model_ready=lambda: bool(status["model_ready"]),
        server=config.server,
        thumbnails_dir=config.index.data_dir / "thumbnails",
        max_image_pixels=config.limits.max_image_pixels,
        max_file_bytes=config.limits.max_file_bytes,
    )
    http = HttpServer(app, "127.0.0.1", 0)
    http.start()
    http.serve_forever()
    try:
        yield http
    finally:
        http.stop()


@pytest.fixture
def base_url(server: Any) -> str:
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


class PageProblems:
    """Script errors and CSP refusals: a polished page has none."""

    def __init__(self, page: Any) -> None:
        self.messages: list[str] = []
        page.on("pageerror", lambda error: self.messages.append(f"page error: {error}"))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        # The browser logs every 4xx fetch; the page shows those in words, which tests check.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.messages.append(message.text)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=DESKTOP, color_scheme="light")
    context.set_default_timeout(WAIT_MS)
    opened = context.new_page()
    problems = PageProblems(opened)
    yield opened
    context.close()
    assert problems.messages == []


# -- helpers --------------------------------------------------------------------------------


def card_paths(page: Any) -> list[str]:
    return page.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.path)")


def card_ids(page: Any) -> list[int]:
    return page.eval_on_selector_all(".card", "cards => cards.map(c => Number(c.dataset.id))")


def wait_for_loaded_thumbnails(page: Any) -> None:
    page.wait_for_function(
        """() => {
            const images = [...document.querySelectorAll('.card img')];
            return images.length > 0 && images.every(img => img.complete && img.naturalWidth > 0);
        }"""
    )


def focused(page: Any, expression: str) -> Any:
    return page.evaluate(f"() => {{ const el = document.activeElement; return {expression}; }}")


def screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.mouse.move(0, 0)  # no hover effects in the picture
    page.wait_for_timeout(350)  # let fades finish
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=False)


# -- tests ----------------------------------------------------------------------------------


def test_typing_a_query_shows_thumbnails_and_bookmarkable_url(page: Any, base_url: str) -> None:
    page.goto(base_url)
    assert focused(page, "el.id") == "q"  # autofocus

    page.keyboard.type("a red circle")
    page.wait_for_selector('.card[data-path$="red-circle.png"]')
    wait_for_loaded_thumbnails(page)

    assert len(card_paths(page)) == len(SCENES)
    assert re.search(r"took \d+ ms", page.inner_text("#result-count"))
    assert "q=a+red+circle" in page.url
    thumb = page.get_attribute(".card img", "src") or ""
    assert re.fullmatch(r"/thumb/\d+\?size=320", thumb)
    assert "size=640 2x" in (page.get_attribute(".card img", "srcset") or "")
    assert page.get_attribute(".card-link", "target") == "_blank"

    # The indexing banner, in words, with the offline folder listed.
    banner = page.locator("#banner")
    assert banner.get_attribute("role") == "status"
    banner.get_by_text("Indexing 1,234 / 5,000 — 12.3 images/s, about 6 min left").wait_for()
    assert "/media/backup/Photos" in banner.inner_text()
    screenshot(page, "desktop-light-results")

    # Hovering a result shows its score and path.
    page.hover('.card[data-path$="red-circle.png"]')
    info = page.locator('.card[data-path$="red-circle.png"] .card-info')
    page.wait_for_function("el => getComputedStyle(el).opacity === '1'", arg=info.element_handle())
    assert "red-circle.png" in info.inner_text()

    # Reloading the bookmarked URL runs the same search.
    page.goto(f"{base_url}/?q=blue+square")
    page.wait_for_selector(".card")
    assert page.input_value("#q") == "blue square"


@pytest.mark.parametrize("library", [PAGE_SIZE + 12], indirect=True)
def test_scrolling_loads_the_next_page(page: Any, base_url: str) -> None:
    page.goto(f"{base_url}/?q=a+circle")
    page.wait_for_function(f"() => document.querySelectorAll('.card').length === {PAGE_SIZE}")
    assert page.inner_text("#result-count").startswith(f"{PAGE_SIZE}+ pictures")

    page.mouse.wheel(0, 20_000)  # the sentinel comes near: the next page loads on its own
    page.wait_for_function(f"() => document.querySelectorAll('.card').length === {PAGE_SIZE + 12}")
    assert page.inner_text("#result-count").startswith(f"{PAGE_SIZE + 12} pictures")
    assert len(set(card_ids(page))) == PAGE_SIZE + 12  # no duplicates across pages
    assert page.locator("#load-more").is_hidden()  # nothing left to load


def test_more_like_this_excludes_the_source(page: Any, base_url: str) -> None:
    page.goto(f"{base_url}/?q=a+blue+square")
    page.wait_for_selector(".card")
    source = page.locator('.card[data-path$="blue-square.png"]')
    source_id = int(source.get_attribute("data-id") or 0)
    source.hover()
    source.locator(".card-similar").click()

    page.wait_for_function(
        "id => !document.querySelector(`.card[data-id='${id}']`) && "
        "document.querySelectorAll('.card').length > 0",
        arg=source_id,
    )
    wait_for_loaded_thumbnails(page)
    assert source_id not in card_ids(page)
    assert len(card_ids(page)) == len(SCENES) - 1
    assert "Like blue-square.png" in page.inner_text("#query-chip")
    assert f"similar={source_id}" in page.url


def test_searching_by_an_uploaded_picture_ranks_it_first(
    page: Any, base_url: str, photos_dir: Path
) -> None:
    page.goto(base_url)
    page.set_input_files("#image-input", str(photos_dir / "yellow-star.png"))
    page.wait_for_function(
        "() => document.querySelector('.card')?.dataset.path.endsWith('yellow-star.png')"
    )
    wait_for_loaded_thumbnails(page)
    assert page.locator("#query-chip").is_visible()
    assert "yellow-star.png" in page.inner_text("#query-chip")
    score = float(page.inner_text(".card .card-score"))
    assert score > 0.99

    page.click("#query-chip-remove")
    page.wait_for_selector("#empty:not([hidden])")
    assert card_paths(page) == []


def test_keyboard_moves_opens_and_clears(page: Any, base_url: str) -> None:
    page.goto(f"{base_url}/?q=green")
    page.wait_for_selector(".card")
    wait_for_loaded_thumbnails(page)
    ids = card_ids(page)

    page.keyboard.press("ArrowDown")  # from the search box into the grid
    assert focused(page, "el.closest('.card')?.dataset.id") == str(ids[0])
    info = page.locator(".card").first.locator(".card-info")
    page.wait_for_function("el => getComputedStyle(el).opacity === '1'", arg=info.element_handle())
    page.keyboard.press("ArrowRight")
    assert focused(page, "el.closest('.card')?.dataset.id") == str(ids[1])
    columns = page.eval_on_selector(
        "#results", "grid => getComputedStyle(grid).gridTemplateColumns.split(' ').length"
    )
    page.keyboard.press("ArrowDown")
    assert focused(page, "el.closest('.card')?.dataset.id") == str(ids[1 + columns])
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowLeft")
    assert focused(page, "el.closest('.card')?.dataset.id") == str(ids[0])
    # Roving focus: only the focused result is a Tab stop.
    assert page.locator('.card-link[tabindex="0"]').count() == 1
    outline = focused(page, "getComputedStyle(el).outlineStyle")
    assert outline != "none"

    # Enter opens the original in a new tab.
    with page.context.expect_page() as opened:
        page.keyboard.press("Enter")
    original = opened.value
    original.wait_for_load_state()
    assert re.search(r"/file/\d+$", original.url)
    original.close()

    # `m` searches for more like the focused result; its first result takes the focus.
    page.bring_to_front()
    page.keyboard.press("m")
    page.wait_for_function(
        "id => !document.querySelector(`.card[data-id='${id}']`) && "
        "document.querySelector('.card')",
        arg=ids[0],
    )
    page.wait_for_function("() => document.activeElement.classList.contains('card-link')")

    page.keyboard.press("/")
    assert focused(page, "el.id") == "q"
    page.keyboard.press("Escape")
    page.wait_for_selector("#empty:not([hidden])")
    assert card_paths(page) == []
    assert page.input_value("#q") == ""
    assert page.locator("#query-chip").is_hidden()
    assert page.url.rstrip("/") == base_url


def test_bad_queries_and_filters_are_explained(page: Any, base_url: str, photos_dir: Path) -> None:
    page.goto(base_url)
    page.fill("#q", "red -red")
    error = page.locator("#search-error")
    error.wait_for()
    assert "cancel" in error.inner_text()
    assert page.get_attribute("#q", "aria-invalid") is not None

    page.fill("#q", "red")
    error.wait_for(state="hidden")
    page.wait_for_selector(".card")

    page.fill("#filter-folder", str(photos_dir / "nowhere"))
    page.wait_for_selector("#empty:not([hidden])")
    assert "No pictures match" in page.inner_text("#empty")
    assert "folder=" in page.url
    page.get_by_role("button", name="Clear filters").first.click()
    page.wait_for_selector(".card")
    assert page.input_value("#filter-folder") == ""


def test_empty_library_and_model_error_are_explained(
    page: Any, base_url: str, status: dict[str, Any]
) -> None:
    status.update(
        indexing_status(
            state="model_error",
            state_detail="tiny-clip.pt is not a checkpoint",
            model_ready=False,
            images=0,
            paths=0,
            roots=[],
            progress={"done": 0, "total": 0, "rate": 0.0, "eta_seconds": None},
        )
    )
    page.goto(base_url)
    page.locator("#banner").get_by_text("The model could not be loaded: tiny-clip.pt").wait_for()
    assert page.get_attribute("#banner", "data-tone") == "error"
    assert "Search is unavailable" in page.inner_text("#empty")

    status.update(state="idle", state_detail=None, model_ready=True)
    page.reload()
    page.get_by_text("No pictures indexed yet").first.wait_for()
    assert "add folders to your config" in page.inner_text("#empty").lower()
    assert page.locator("#banner").is_hidden()


def test_search_waits_for_the_model_then_runs(
    page: Any, base_url: str, status: dict[str, Any]
) -> None:
    status.update(state="loading_model", model_ready=False)
    page.goto(f"{base_url}/?q=a+red+circle")
    page.get_by_text("The model is still loading").wait_for()
    page.locator("#banner").get_by_text("Loading model…").wait_for()

    status.update(state="idle", model_ready=True)
    page.wait_for_selector('.card[data-path$="red-circle.png"]')  # retried on its own
    page.locator("#banner").get_by_text("Loading model…").wait_for(state="hidden")


def test_a_stopped_daemon_is_explained(page: Any, base_url: str, server: Any) -> None:
    page.goto(f"{base_url}/?q=red")
    page.wait_for_selector(".card")
    server.stop()
    page.fill("#q", "blue")
    page.locator("#empty").get_by_text("reach wmpd").wait_for()
    page.locator("#banner").get_by_text("wmpd is not answering").wait_for()
    assert page.get_attribute("#banner", "data-tone") == "error"


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_screenshots_for_review(browser: Any, base_url: str, scheme: str) -> None:
    for name, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        context = browser.new_context(
            viewport=viewport,
            color_scheme=scheme,
            device_scale_factor=2 if name == "phone" else 1,
            has_touch=name == "phone",
            is_mobile=name == "phone",
        )
        context.set_default_timeout(WAIT_MS)
        page = context.new_page()
        problems = PageProblems(page)
        page.goto(base_url)
        page.get_by_text("Indexing 1,234").wait_for()
        screenshot(page, f"{name}-{scheme}-welcome")
        page.fill("#q", "a yellow star")
        page.wait_for_selector(".card")
        wait_for_loaded_thumbnails(page)
        # The 2x thumbnails on the phone must be the 640 px ones.
        if name == "phone":
            current = page.eval_on_selector(".card img", "img => img.currentSrc")
            assert current.endswith("size=640")
            assert page.locator("#filters").is_hidden()
            page.click("#filters-toggle")
            assert page.locator("#filter-folder").is_visible()
            screenshot(page, f"{name}-{scheme}-filters")
            page.click("#filters-toggle")
        screenshot(page, f"{name}-{scheme}-results")
        page.click("#help-toggle")
        page.locator("#help").wait_for()
        screenshot(page, f"{name}-{scheme}-help")
        context.close()
        assert problems.messages == []
