"""A small HTTP client for a running daemon, used by the CLI (stdlib only, fast to import)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

from wmpd.config import Config
from wmpd.errors import QueryError, WmpdError

CONNECT_TIMEOUT_SECONDS = 0.5
REQUEST_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class DaemonClient:
    base_url: str
    token: str | None = None

    @classmethod
    def for_config(cls, config: Config) -> DaemonClient:
        host = config.server.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"  # a wildcard bind also answers on loopback
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return cls(f"http://{host}:{config.server.port}", config.server.token)

    def _request(
        self,
        path: str,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = REQUEST_TIMEOUT_SECONDS,
    ) -> Any:
        request = urllib.request.Request(self.base_url + path, data=data, headers=headers or {})
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def status(self) -> dict[str, Any] | None:
        """The daemon's status, or None when no daemon answers."""
        try:
            result: dict[str, Any] = self._request(
                "/api/status", timeout=CONNECT_TIMEOUT_SECONDS * 4
            )
            return result
        except (OSError, ValueError):
            return None

    def is_up(self) -> bool:
        try:
            self._request("/healthz", timeout=CONNECT_TIMEOUT_SECONDS)
        except (OSError, ValueError):
            return False
        return True

    def search_text(
        self, query: str, k: int, offset: int = 0, folder: str | None = None
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"q": query, "k": k, "offset": offset}
        if folder:
            params["folder"] = folder
        return self._call(f"/api/search?{urllib.parse.urlencode(params)}")

    def search_image(
        self, image: bytes, query: str, k: int, offset: int = 0, folder: str | None = None
    ) -> dict[str, Any]:
        boundary = uuid.uuid4().hex
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="query"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
            + image
            + b"\r\n"
        ]
        fields = (("q", query), ("k", str(k)), ("offset", str(offset)), ("folder", folder or ""))
        for name, value in fields:
            if value:
                parts.append(
                    f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                    f"{value}\r\n".encode()
                )
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        return self._call("/api/search", body, headers)

    def _call(
        self, path: str, data: bytes | None = None, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        try:
            result: dict[str, Any] = self._request(path, data, headers)
            return result
        except urllib.error.HTTPError as exc:
            try:
                error = json.loads(exc.read())["error"]
            except (ValueError, KeyError, TypeError):
                raise WmpdError(f"the daemon answered HTTP {exc.code}") from exc
            if exc.code == 400:
                raise QueryError(error.get("parameter", "query"), error["message"]) from exc
            raise WmpdError(f"the daemon answered: {error['message']}") from exc
