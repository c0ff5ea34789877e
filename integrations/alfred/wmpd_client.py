"""A small client for wmpd's JSON API, shared by the launcher integrations (stdlib only).

Each integration folder holds its own copy of this file, so that a folder installs by
copying it alone; the test suite checks that the copies stay identical.

Settings come from the environment: WMPD_URL (default http://127.0.0.1:8756), WMPD_TOKEN
(sent as `Authorization: Bearer`), WMPD_RESULTS (how many hits, default 20), WMPD_TIMEOUT
(seconds, default 4), WMPD_THUMB_CACHE (where thumbnails are kept) and WMPD_OPEN_COMMAND
(what opens a picture instead of `open` / `xdg-open`).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import queue
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8756"
DEFAULT_RESULTS = 20
MAX_RESULTS = 100
# Launchers run these scripts while the user waits: every request gives up quickly.
TIMEOUT_SECONDS = 4.0
THUMB_TIMEOUT_SECONDS = 3.0
THUMB_BUDGET_SECONDS = 5.0
THUMB_SIZE_PIXELS = 128
THUMB_WORKERS = 4
MAX_CACHED_THUMBS = 2000
MAX_ERROR_BODY_BYTES = 64 * 1024
NOT_RUNNING = "wmpd is not running: start it with `wmpd run` or `wmpd service install`"


class WmpdError(Exception):
    """A failure to show the user: `message` is the headline, `detail` says what to do."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.message} ({self.detail})" if self.detail else self.message


class Client:
    """Talks to one wmpd server; arguments left as None come from the environment."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        timeout: float | None = None,
    ) -> None:
        self.base_url = (url or os.environ.get("WMPD_URL") or DEFAULT_URL).strip().rstrip("/")
        scheme = urllib.parse.urlsplit(self.base_url).scheme
        if scheme not in ("http", "https"):
            raise WmpdError(
                f"WMPD_URL is not an http:// address: {self.base_url!r}",
                f"the default is {DEFAULT_URL}",
            )
        self.token = token or os.environ.get("WMPD_TOKEN") or None
        self.timeout = timeout or _float_env("WMPD_TIMEOUT", TIMEOUT_SECONDS)
        # A local daemon is never reached through a proxy, whatever http_proxy says.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def ping(self) -> None:
        """Raise WmpdError unless wmpd answers."""
        self._get_json("/healthz")

    def search(self, query: str, k: int | None = None) -> list[dict[str, Any]]:
        """The hits for a text query, best first."""
        count = k or _int_env("WMPD_RESULTS", DEFAULT_RESULTS)
        count = max(1, min(count, MAX_RESULTS))
        params = urllib.parse.urlencode({"q": query, "k": count})
        answer = self._get_json(f"/api/search?{params}")
        results = answer.get("results") if isinstance(answer, dict) else None
        if not isinstance(results, list):
            raise self._not_wmpd()
        return [hit for hit in results if isinstance(hit, dict) and "id" in hit and "path" in hit]

    def image_path(self, image_id: int) -> str:
        """A path of a catalogued image that exists on this computer now."""
        answer = self._get_json(f"/api/images/{int(image_id)}")
        paths = answer.get("paths") if isinstance(answer, dict) else None
        if not isinstance(paths, list):
            raise self._not_wmpd()
        for path in paths:
            if isinstance(path, str) and os.path.isabs(path) and os.path.exists(path):
                return path
        raise WmpdError(f"picture {image_id} is no longer on disk", "search again")

    def thumbnails(
        self, hits: list[dict[str, Any]], cache_dir: Path, size: int = THUMB_SIZE_PIXELS
    ) -> dict[int, Path]:
        """Local JPEG thumbnails for hits, by image id; one that cannot be fetched is left out."""
        cache_dir.mkdir(parents=True, exist_ok=True)
        wanted = {int(hit["id"]): (cache_dir / self._thumb_name(hit, size), hit) for hit in hits}
        missing = [(path, hit) for path, hit in wanted.values() if not path.exists()]
        for path, _ in wanted.values():
            if path.exists():
                _touch(path)
        if missing:
            self._fetch_thumbnails(missing, size)
            prune_cache(cache_dir)
        return {image_id: path for image_id, (path, _) in wanted.items() if path.exists()}

    # -- internals ----------------------------------------------------------------------

    def _thumb_name(self, hit: dict[str, Any], size: int) -> str:
        # Row ids can be reused after a picture is deleted, so the name also covers what
        # the hit says about the picture.
        key = "\n".join(
            str(part) for part in (self.base_url, hit["id"], hit["path"], hit.get("width"), size)
        )
        return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32] + ".jpg"

    def _fetch_thumbnails(self, jobs: list[tuple[Path, dict[str, Any]]], size: int) -> None:
        # Daemon threads and an overall deadline: a slow server costs a missing icon,
        # never a launcher that hangs.
        todo: queue.Queue[tuple[Path, dict[str, Any]]] = queue.Queue()
        for job in jobs:
            todo.put(job)

        def work() -> None:
            while True:
                try:
                    path, hit = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    self._save_thumbnail(path, hit, size)
                except (WmpdError, OSError):
                    continue

        workers = [
            threading.Thread(target=work, daemon=True) for _ in range(min(THUMB_WORKERS, len(jobs)))
        ]
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + THUMB_BUDGET_SECONDS
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    def _save_thumbnail(self, path: Path, hit: dict[str, Any], size: int) -> None:
        thumb_url = hit.get("thumb_url")
        if not (isinstance(thumb_url, str) and thumb_url.startswith("/")):
            thumb_url = f"/thumb/{int(hit['id'])}"
        data, content_type = self._get(f"{thumb_url}?size={size}", THUMB_TIMEOUT_SECONDS)
        if not content_type.startswith("image/"):
            return
        handle, temp_name = tempfile.mkstemp(dir=path.parent, suffix=".part")
        try:
            with os.fdopen(handle, "wb") as temp:
                temp.write(data)
            os.replace(temp_name, path)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise

    def _get_json(self, path_and_query: str) -> Any:
        data, _ = self._get(path_and_query, self.timeout)
        try:
            return json.loads(data)
        except ValueError:
            raise self._not_wmpd() from None

    def _get(self, path_and_query: str, timeout: float) -> tuple[bytes, str]:
        request = urllib.request.Request(self.base_url + path_and_query)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with self._opener.open(request, timeout=timeout) as response:
                return response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            raise self._api_error(exc) from None
        except urllib.error.URLError as exc:
            raise self._connection_error(exc.reason, timeout) from None
        except (OSError, http.client.HTTPException) as exc:
            raise self._connection_error(exc, timeout) from None

    def _connection_error(self, reason: object, timeout: float) -> WmpdError:
        # Python 3.9 (the python3 that macOS ships) still has its own socket.timeout.
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return WmpdError(
                f"wmpd did not answer within {timeout:g} s", "it may be busy: try again"
            )
        if isinstance(reason, (ConnectionError, http.client.HTTPException)):
            return WmpdError(
                NOT_RUNNING,
                f"nothing answers at {self.base_url}; set WMPD_URL if wmpd listens elsewhere",
            )
        return WmpdError(f"cannot reach wmpd at {self.base_url}", str(reason))

    def _api_error(self, exc: urllib.error.HTTPError) -> WmpdError:
        try:
            body = json.loads(exc.read(MAX_ERROR_BODY_BYTES))
            error = body["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError, OSError):
            return WmpdError(
                f"the server at {self.base_url} answered HTTP {exc.code}",
                "is WMPD_URL the address of wmpd?",
            )
        if code == "unauthorized":
            hint = "WMPD_TOKEN was refused" if self.token else "WMPD_TOKEN is not set"
            return WmpdError(
                "wmpd needs its token", f"{hint}: set it to server.token from wmpd's config"
            )
        if code == "model_loading":
            return WmpdError("wmpd is still loading its model", "try again in a moment")
        return WmpdError(f"wmpd: {message}", f"HTTP {exc.code} {code}")

    def _not_wmpd(self) -> WmpdError:
        return WmpdError(
            f"the server at {self.base_url} did not answer like wmpd",
            "is WMPD_URL the address of wmpd?",
        )


def default_cache_dir() -> Path:
    """Where thumbnails are kept: WMPD_THUMB_CACHE, else the platform's cache folder."""
    configured = os.environ.get("WMPD_THUMB_CACHE")
    if configured:
        return Path(configured).expanduser()
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "wmpd-launchers" / "thumbnails"


def prune_cache(cache_dir: Path, keep: int = MAX_CACHED_THUMBS) -> None:
    """Delete the least recently used thumbnails beyond `keep`."""
    try:
        entries = [
            (entry.stat().st_mtime, entry.path)
            for entry in os.scandir(cache_dir)
            if entry.is_file() and entry.name.endswith((".jpg", ".part"))
        ]
    except OSError:
        return
    if len(entries) <= keep:
        return
    entries.sort()
    for _, path in entries[: len(entries) - keep * 3 // 4]:
        try:
            os.unlink(path)
        except OSError:
            continue


def open_file(path: str) -> None:
    """Open a picture with the desktop's default viewer, without waiting for it."""
    if not os.path.isabs(path):
        raise WmpdError(f"not an absolute path: {path!r}")
    configured = os.environ.get("WMPD_OPEN_COMMAND")
    if configured:
        command = shlex.split(configured)
    else:
        command = ["open"] if sys.platform == "darwin" else ["xdg-open"]
    try:
        subprocess.Popen(
            [*command, path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        raise WmpdError(f"cannot open {path}", f"{command[0]}: {exc.strerror}") from None


def describe(hit: dict[str, Any]) -> str:
    """One line about a hit: size, format, capture date and score."""
    parts = []
    if hit.get("width") and hit.get("height"):
        parts.append(f"{hit['width']}x{hit['height']}")
    if hit.get("format"):
        parts.append(str(hit["format"]))
    if hit.get("taken_at"):
        parts.append(f"taken {str(hit['taken_at'])[:10]}")
    if isinstance(hit.get("score"), (int, float)):
        parts.append(f"score {hit['score']:.3f}")
    return clean_text(", ".join(parts))


def clean_text(text: str) -> str:
    """Text safe to put on one line of a launcher's output (no control characters)."""
    return "".join(char if char.isprintable() else "?" for char in text)


def _float_env(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 else default


def _int_env(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, ""))
    except ValueError:
        return default


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        return
