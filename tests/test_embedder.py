"""The embedder on the repository's tiny open_clip model, loaded through the product's path."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from tests import images
from tests.conftest import TINY_CONFIG, TINY_WEIGHTS
from wmpd import embedder as embedder_module
from wmpd.config_schema import ModelConfig
from wmpd.embedder import Embedder, model_id_for
from wmpd.errors import ModelLoadError

CONTEXT_LENGTH = json.loads(TINY_CONFIG.read_text())["text_cfg"]["context_length"]


def tiny_model_config(weights: Path = TINY_WEIGHTS, name: Path = TINY_CONFIG) -> ModelConfig:
    return ModelConfig(name=str(name), pretrained=str(weights), threads=1, batch_size=8)


@pytest.fixture(scope="module")
def embedder(tiny_weights: Path) -> Embedder:
    # One load per module: the model is read-only once loaded, so tests cannot disturb it.
    loaded = Embedder(tiny_model_config(tiny_weights))
    loaded.load()
    return loaded


@pytest.fixture(scope="module")
def reference(tiny_weights: Path) -> tuple[torch.nn.Module, object, object]:
    """open_clip's own model, transform and tokenizer for the same checkpoint."""
    open_clip.add_model_config(TINY_CONFIG)
    model, _, preprocess = open_clip.create_model_and_transforms(
        TINY_CONFIG.stem, pretrained=str(tiny_weights)
    )
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(TINY_CONFIG.stem)


def sha16(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


# -- identity -------------------------------------------------------------------------------


def test_model_id_names_the_config_and_checkpoint_by_content(embedder: Embedder) -> None:
    assert embedder.model_id == (
        f"{TINY_CONFIG.stem}#{sha16(TINY_CONFIG)}/{TINY_WEIGHTS.name}#{sha16(TINY_WEIGHTS)}"
    )


def test_model_id_changes_when_the_checkpoint_bytes_change(tmp_path: Path) -> None:
    weights = tmp_path / "tiny-clip.pt"
    shutil.copyfile(TINY_WEIGHTS, weights)
    before = model_id_for(tiny_model_config(weights))
    assert model_id_for(tiny_model_config(weights)) == before  # stable

    state = torch.load(weights, map_location="cpu", weights_only=True)
    state["logit_scale"] = state["logit_scale"] + 1
    torch.save(state, weights)

    after = model_id_for(tiny_model_config(weights))
    assert after != before
    assert sha16(weights) in after


def test_model_id_marks_reduced_precision() -> None:
    config = ModelConfig(name="ViT-B-32", pretrained="openai", precision="int8")
    assert model_id_for(config) == "ViT-B-32/openai@int8"


def test_the_loaded_model_reports_its_input_and_output(embedder: Embedder) -> None:
    assert embedder.loaded
    assert embedder.dim == json.loads(TINY_CONFIG.read_text())["embed_dim"]
    assert embedder.spec.image_size == 64
    assert embedder.spec.mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN)
    assert embedder.spec.std == pytest.approx(open_clip.OPENAI_DATASET_STD)


# -- images ---------------------------------------------------------------------------------


def test_image_vectors_are_unit_length_and_match_open_clip(
    embedder: Embedder, reference: tuple[torch.nn.Module, object, object]
) -> None:
    model, preprocess, _ = reference
    pictures = [images.scene(seed, side=80) for seed in range(6)]
    pixels = torch.stack([preprocess(picture) for picture in pictures])  # type: ignore[operator]

    vectors = embedder.encode_images(pixels.numpy())

    assert vectors.shape == (6, embedder.dim)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    with torch.no_grad():
        expected = model.encode_image(pixels, normalize=True).numpy()  # type: ignore[operator]
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_an_image_encodes_the_same_alone_and_in_a_batch(
    embedder: Embedder, reference: tuple[torch.nn.Module, object, object]
) -> None:
    _, preprocess, _ = reference
    pixels = torch.stack(
        [preprocess(images.scene(seed)) for seed in range(4)]  # type: ignore[operator]
    ).numpy()

    batch = embedder.encode_images(pixels)
    alone = np.concatenate([embedder.encode_images(pixels[i : i + 1]) for i in range(4)])

    np.testing.assert_allclose(batch, alone, atol=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_models_load_and_stay_close_to_fp32(
    embedder: Embedder,
    reference: tuple[torch.nn.Module, object, object],
    tiny_weights: Path,
    precision: str,
) -> None:
    _, preprocess, _ = reference
    pixels = torch.stack(
        [preprocess(images.scene(seed)) for seed in range(3)]  # type: ignore[operator]
    ).numpy()
    texts = ["a red circle", " ".join(["a green star on the grass"] * 5)]
    reduced = Embedder(replace(tiny_model_config(tiny_weights), precision=precision))

    reduced.load()

    assert reduced.model_id == f"{embedder.model_id}@{precision}"
    image_vectors = reduced.encode_images(pixels)
    text_vectors = reduced.encode_texts(texts)
    for ours, full in (
        (image_vectors, embedder.encode_images(pixels)),
        (text_vectors, embedder.encode_texts(texts)),
    ):
        assert ours.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
        assert (ours * full).sum(axis=1).min() >= 0.99


# -- text -----------------------------------------------------------------------------------


def _exactly_context_length_query(tokenizer: object) -> str:
    words = ["red"] * (CONTEXT_LENGTH - 2)  # + start and end of text
    query = " ".join(words)
    tokens = tokenizer([query])  # type: ignore[operator]
    assert int((tokens[0] != 0).sum()) == CONTEXT_LENGTH
    return query


@pytest.mark.parametrize(
    "query",
    [
        "a",
        "a photo of a red circle",
        "a photo of a blue star on the grass at night",
        "EXACT",
        " ".join(["a very long description of a yellow heart on the sand"] * 6),
        "",
        "café ⭐ 犬 🐕",
    ],
)
def test_text_vectors_match_open_clips_own_encode_text(
    embedder: Embedder, reference: tuple[torch.nn.Module, object, object], query: str
) -> None:
    model, _, tokenizer = reference
    if query == "EXACT":
        query = _exactly_context_length_query(tokenizer)

    ours = embedder.encode_texts([query])[0]

    with torch.no_grad():
        theirs = model.encode_text(tokenizer([query]), normalize=True)[0].numpy()  # type: ignore[operator]
    assert np.linalg.norm(ours) == pytest.approx(1.0, abs=1e-5)
    assert float(ours @ theirs) >= 0.9999


def test_a_batch_of_texts_of_different_lengths_matches_open_clip(
    embedder: Embedder, reference: tuple[torch.nn.Module, object, object]
) -> None:
    model, _, tokenizer = reference
    queries = ["dog", "a photo of a green square", " ".join(["night sky"] * 20)]

    ours = embedder.encode_texts(queries)

    with torch.no_grad():
        theirs = model.encode_text(tokenizer(queries), normalize=True).numpy()  # type: ignore[operator]
    cosines = (ours * theirs).sum(axis=1)
    assert cosines.min() >= 0.9999


def test_the_text_cache_returns_the_identical_read_only_array(embedder: Embedder) -> None:
    first = embedder.encode_text("a purple triangle")
    again = embedder.encode_text("a purple triangle")

    assert again is first
    assert not first.flags.writeable
    np.testing.assert_array_equal(first, embedder.encode_texts(["a purple triangle"])[0])


def test_the_text_cache_forgets_the_least_recently_used(
    tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedder_module, "TEXT_CACHE_SIZE", 2)
    small = Embedder(tiny_model_config(tiny_weights))
    small.load()
    oldest = small.encode_text("one")
    kept = small.encode_text("two")

    assert small.encode_text("two") is kept  # now the most recent
    small.encode_text("three")  # evicts "one", the least recently used

    assert small.encode_text("two") is kept
    again = small.encode_text("one")
    assert again is not oldest
    np.testing.assert_array_equal(again, oldest)


# -- failures -------------------------------------------------------------------------------


def test_encoding_before_load_says_so(tiny_weights: Path) -> None:
    unloaded = Embedder(tiny_model_config(tiny_weights))

    with pytest.raises(ModelLoadError, match="not loaded"):
        unloaded.encode_texts(["x"])
    with pytest.raises(ModelLoadError, match="not loaded"):
        unloaded.encode_images(np.zeros((1, 3, 64, 64), dtype=np.float32))


def test_a_missing_checkpoint_says_which_file_and_what_to_check(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "weights.pt"

    with pytest.raises(ModelLoadError) as caught:
        Embedder(tiny_model_config(missing)).load()

    message = str(caught.value)
    assert str(missing) in message
    assert "model.pretrained" in message


def test_a_checkpoint_for_another_architecture_is_explained(tmp_path: Path) -> None:
    narrow_config = json.loads(TINY_CONFIG.read_text())
    narrow_config["embed_dim"] = 32
    narrow_path = tmp_path / "tiny-clip-narrow.json"
    narrow_path.write_text(json.dumps(narrow_config))
    open_clip.add_model_config(narrow_path)
    narrow = open_clip.create_model("tiny-clip-narrow")
    weights = tmp_path / "narrow.pt"
    torch.save(narrow.state_dict(), weights)

    with pytest.raises(ModelLoadError) as caught:
        Embedder(tiny_model_config(weights)).load()

    message = str(caught.value)
    assert "model.pretrained" in message
    assert "architecture in model.name" in message


def test_a_checkpoint_of_garbage_is_explained(tmp_path: Path) -> None:
    weights = tmp_path / "garbage.pt"
    weights.write_bytes(b"not a checkpoint" * 100)

    with pytest.raises(
        ModelLoadError, match=r"model\.pretrained points at an open_clip checkpoint"
    ):
        Embedder(tiny_model_config(weights)).load()


def test_an_unreadable_model_config_json_is_explained(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{ this is not json")

    with pytest.raises(ModelLoadError, match="not a readable open_clip model config JSON"):
        Embedder(tiny_model_config(name=bad)).load()


def test_a_hub_tag_offline_without_a_cache_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = ModelConfig(name="ViT-B-32", pretrained="laion2b_s34b_b79k", threads=1)

    with pytest.raises(ModelLoadError) as caught:
        Embedder(config).load()

    message = str(caught.value)
    assert "HF_HUB_OFFLINE=1" in message
    assert "model.pretrained" in message
    assert "local" in message
