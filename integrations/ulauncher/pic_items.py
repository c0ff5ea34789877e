"""What the ulauncher extension shows for a query, without ulauncher (stdlib only).

`build_items` turns the text typed after the keyword into plain dicts: `name`,
`description`, `icon` (a thumbnail's absolute path, or the extension's own icon) and
`path` (the picture Enter opens; empty for a message, where Enter does nothing).
`python3 pic_items.py a red bicycle` prints them as JSON, to check a setup by hand (it
exits 1 when the rows are a message rather than pictures).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import wmpd_client

EXTENSION_ICON = "images/icon.svg"
# What the extension shows unless its "Results" preference says otherwise.
DEFAULT_LIMIT = 8


def build_items(
    query: str,
    client: wmpd_client.Client,
    cache_dir: Path,
    limit: int | None = None,
) -> list[dict[str, str]]:
    """The rows for `query` (`limit` of them, else WMPD_RESULTS); a failure is one message row."""
    if not query.strip():
        return [message_item("Search your pictures", "Describe a picture: a dog on a beach")]
    try:
        hits = client.search(query, limit)
        if not hits:
            return [message_item(f"No pictures match “{query}”", "Try other words")]
        thumbnails = client.thumbnails(hits, cache_dir)
    except wmpd_client.WmpdError as error:
        return [message_item(error.message, error.detail)]
    return [hit_item(hit, thumbnails.get(int(hit["id"]))) for hit in hits]


def hit_item(hit: dict[str, Any], thumbnail: Path | None) -> dict[str, str]:
    path = str(hit["path"])
    return {
        "name": wmpd_client.clean_text(os.path.basename(path)),
        "description": wmpd_client.clean_text(
            f"{os.path.dirname(path)}  ·  {wmpd_client.describe(hit)}"
        ),
        "icon": str(thumbnail) if thumbnail else EXTENSION_ICON,
        "path": path,
    }


def message_item(name: str, description: str) -> dict[str, str]:
    return {
        "name": wmpd_client.clean_text(name),
        "description": wmpd_client.clean_text(description),
        "icon": EXTENSION_ICON,
        "path": "",
    }


def main(argv: list[str]) -> int:
    try:
        client = wmpd_client.Client()
    except wmpd_client.WmpdError as error:
        items = [message_item(error.message, error.detail)]
    else:
        items = build_items(" ".join(argv[1:]), client, wmpd_client.default_cache_dir())
    print(json.dumps(items, indent=2))
    return 0 if all(item["path"] for item in items) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
