#!/usr/bin/env python3

# Required parameters:
# @raycast.schemaVersion 1
# @raycast.title Open Picture
# @raycast.mode silent

# Optional parameters:
# @raycast.icon 🖼️
# @raycast.argument1 { "type": "text", "placeholder": "what the picture shows" }
# @raycast.packageName Where's My Pic

# Documentation:
# @raycast.description Open the picture that best matches a description, through wmpd.

"""Raycast script command: open the best match for a description in the default viewer.

Raycast shows the last printed line as a notice. Outside Raycast:
`python3 wmpd-open-picture.py "a red bicycle"`.
"""

from __future__ import annotations

import io
import os
import sys

import wmpd_client


def main(argv: list[str]) -> int:
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(encoding="utf-8", errors="replace")
    query = " ".join(argv[1:]).strip()
    if not query:
        print("Describe the picture to open.")
        return 2
    try:
        hits = wmpd_client.Client().search(query, 1)
        if not hits:
            print(f"No pictures match “{query}”.")
            return 1
        path = str(hits[0]["path"])
        wmpd_client.open_file(path)
    except wmpd_client.WmpdError as error:
        print(str(error))
        return 1
    print(f"Opened {wmpd_client.clean_text(os.path.basename(path))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
