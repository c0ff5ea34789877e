#!/usr/bin/env python3

# Required parameters:
# @raycast.schemaVersion 1
# @raycast.title Search Pictures
# @raycast.mode fullOutput

# Optional parameters:
# @raycast.icon 🖼️
# @raycast.argument1 { "type": "text", "placeholder": "what the picture shows" }
# @raycast.packageName Where's My Pic

# Documentation:
# @raycast.description Search your pictures by what they show, through a running wmpd.

"""Raycast script command: list the pictures that match a description.

Outside Raycast: `python3 wmpd-search-pictures.py "a red bicycle"`.
"""

from __future__ import annotations

import io
import sys
from typing import Any

import wmpd_client


def format_results(query: str, hits: list[dict[str, Any]]) -> str:
    if not hits:
        return f"No pictures match “{query}”.\n"
    lines = [f"{len(hits)} pictures for “{query}”:", ""]
    for rank, hit in enumerate(hits, 1):
        path = wmpd_client.clean_text(str(hit["path"]))
        lines.append(f"{rank:>3}. {path}")
        lines.append(f"     {wmpd_client.describe(hit)}")
    lines += ["", "“Open Picture” opens the best match."]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(encoding="utf-8", errors="replace")
    query = " ".join(argv[1:]).strip()
    if not query:
        print("Describe the picture to search for.")
        return 2
    try:
        hits = wmpd_client.Client().search(query)
    except wmpd_client.WmpdError as error:
        print(error.message)
        if error.detail:
            print(error.detail)
        return 1
    sys.stdout.write(format_results(query, hits))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
