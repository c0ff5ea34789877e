"""Image batches split into single-threaded streams give the same vectors as one pass."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from tests.conftest import TINY_CONFIG
from wmpd.config import ModelConfig
from wmpd.embedder import Embedder


def test_a_batch_encoded_as_streams_matches_one_pass(tiny_weights: Path) -> None:
    embedder = Embedder(ModelConfig(name=str(TINY_CONFIG), pretrained=str(tiny_weights), threads=2))
    embedder.load()
    size = embedder.spec.image_size
    pixels = np.random.default_rng(0).standard_normal((16, 3, size, size)).astype(np.float32)

    streamed = embedder.encode_images(pixels)
    one_by_one = np.concatenate([embedder.encode_images(p[None]) for p in pixels])

    assert streamed.shape == (16, embedder.dim)
    np.testing.assert_allclose(streamed, one_by_one, atol=1e-5)
    assert any(t.name.startswith("wmpd-model") for t in threading.enumerate())
