"""Ulauncher extension: `pic <description>` searches your pictures through wmpd.

The rows come from pic_items.py (plain Python, testable without ulauncher); this file only
turns them into ulauncher items. Enter opens the picture, Alt+Enter its folder.
"""

from __future__ import annotations

import os

import pic_items
import wmpd_client
from ulauncher.api.client.EventListener import EventListener
from ulauncher.api.client.Extension import Extension
from ulauncher.api.shared.action.DoNothingAction import DoNothingAction
from ulauncher.api.shared.action.OpenAction import OpenAction
from ulauncher.api.shared.action.RenderResultListAction import RenderResultListAction
from ulauncher.api.shared.event import KeywordQueryEvent
from ulauncher.api.shared.item.ExtensionResultItem import ExtensionResultItem


class PicExtension(Extension):
    def __init__(self) -> None:
        super().__init__()
        self.subscribe(KeywordQueryEvent, QueryListener())


class QueryListener(EventListener):
    def on_event(self, event: KeywordQueryEvent, extension: PicExtension) -> RenderResultListAction:
        preferences = extension.preferences
        try:
            # Preferences win; empty ones fall back to WMPD_URL / WMPD_TOKEN, then defaults.
            client = wmpd_client.Client(
                url=preferences.get("wmpd_url") or None,
                token=preferences.get("wmpd_token") or None,
            )
        except wmpd_client.WmpdError as error:
            items = [pic_items.message_item(error.message, error.detail)]
        else:
            items = pic_items.build_items(
                event.get_argument() or "",
                client,
                wmpd_client.default_cache_dir(),
                limit=parse_limit(preferences.get("results")),
            )
        return RenderResultListAction([result_item(item) for item in items])


def result_item(item: dict[str, str]) -> ExtensionResultItem:
    path = item["path"]
    return ExtensionResultItem(
        icon=item["icon"],
        name=item["name"],
        description=item["description"],
        on_enter=OpenAction(path) if path else DoNothingAction(),
        on_alt_enter=OpenAction(os.path.dirname(path)) if path else DoNothingAction(),
    )


def parse_limit(value: object) -> int:
    try:
        return max(1, min(int(str(value)), wmpd_client.MAX_RESULTS))
    except ValueError:
        return pic_items.DEFAULT_LIMIT


if __name__ == "__main__":
    PicExtension().run()
