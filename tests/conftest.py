"""Shared fixtures: real configs on temp folders, and the repository's tiny CLIP model.

The model is the one thing tests may substitute, and only with a real open_clip model
loaded through the product's own path (`model.name` = config JSON, `model.pretrained`
= local checkpoint).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from wmpd.config import Config, load_config

REPO = Path(__file__).resolve().parent.parent
MODEL_DIR = REPO / "tests" / "models"
TINY_CONFIG = MODEL_DIR / "tiny-clip.json"
TINY_WEIGHTS = MODEL_DIR / "tiny-clip.pt"


@pytest.fixture(scope="session")
def tiny_weights() -> Path:
    """The shipped, trained tiny CLIP checkpoint."""
    if not TINY_WEIGHTS.exists():
        pytest.fail(f"{TINY_WEIGHTS} is missing: run `python tests/models/train_tiny_clip.py`")
    return TINY_WEIGHTS


ConfigFactory = Callable[..., Config]


def write_test_config(
    directory: Path,
    *folders: Path,
    extra: str = "",
    data_dir: Path | None = None,
    batch_size: int = 8,
    port: int = 8756,
    settle_seconds: float = 0.3,
) -> Config:
    """Write a real YAML config using the tiny model into `directory` and load it."""
    folder_lines = "\n".join(f"  - path: {folder}" for folder in folders)
    text = (
        f"folders:\n{folder_lines}\n"
        f"model:\n  name: {TINY_CONFIG}\n  pretrained: {TINY_WEIGHTS}\n"
        f"  batch_size: {batch_size}\n  threads: 1\n"
        f"index:\n  data_dir: {data_dir or directory / 'data'}\n"
        f"server:\n  port: {port}\n"
        f"watcher:\n  settle_seconds: {settle_seconds}\n"
        f"{extra}"
    )
    path = directory / "config.yaml"
    path.write_text(text)
    return load_config(path)


@pytest.fixture
def make_config(tmp_path: Path, tiny_weights: Path) -> ConfigFactory:
    """Write a real YAML config under tmp_path and load it through wmpd.config."""

    def factory(*folders: Path, **options: Any) -> Config:
        return write_test_config(tmp_path, *folders, **options)

    return factory


@pytest.fixture
def photos_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    return folder
