#!/usr/bin/env python3
"""Alfred Script Filter: search your pictures through wmpd and print Alfred's JSON.

In the workflow's Script Filter (Language /bin/bash, "with input as argv"):

    python3 wmpd-alfred.py "$1"

Every outcome, a failure included, is a list of items Alfred can show.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import wmpd_client


def build_items(query: str, cache_dir: Path) -> list[dict[str, Any]]:
    if not query:
        return [message_item("Search your pictures", "Describe a picture: a dog on a beach")]
    try:
        client = wmpd_client.Client()
        hits = client.search(query)
        if not hits:
            return [message_item(f"No pictures match “{query}”", "Try other words")]
        thumbnails = client.thumbnails(hits, cache_dir)
    except wmpd_client.WmpdError as error:
        return [message_item(error.message, error.detail)]
    return [hit_item(hit, thumbnails.get(int(hit["id"]))) for hit in hits]


def hit_item(hit: dict[str, Any], thumbnail: Path | None) -> dict[str, Any]:
    path = str(hit["path"])
    # Without a thumbnail, Alfred shows the file's own icon.
    icon = {"path": str(thumbnail)} if thumbnail else {"type": "fileicon", "path": path}
    return {
        "uid": f"wmpd-{int(hit['id'])}",
        "title": os.path.basename(path),
        "subtitle": f"{os.path.dirname(path)}  ·  {wmpd_client.describe(hit)}",
        "arg": path,
        "type": "file",
        "icon": icon,
        "quicklookurl": path,
    }


def message_item(title: str, subtitle: str) -> dict[str, Any]:
    return {"title": title, "subtitle": subtitle, "valid": False}


def thumbnail_dir() -> Path:
    # Alfred gives each workflow a cache folder (its variable is lower-case);
    # WMPD_THUMB_CACHE still wins.
    alfred_cache = os.environ.get("alfred_workflow_cache")  # noqa: SIM112
    if alfred_cache and not os.environ.get("WMPD_THUMB_CACHE"):
        return Path(alfred_cache) / "thumbnails"
    return wmpd_client.default_cache_dir()


def main(argv: list[str]) -> int:
    items = build_items(" ".join(argv[1:]).strip(), thumbnail_dir())
    json.dump({"items": items}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
