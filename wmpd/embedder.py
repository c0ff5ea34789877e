"""The open_clip model: loading (hub tag or local checkpoint) and encoding images and text.

This is the only module that imports torch. `model.name` is a built-in open_clip
architecture or a path to an open_clip model config JSON; `model.pretrained` is a hub
tag, a local checkpoint path, or None for random weights (benchmarks only).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from wmpd.config import ModelConfig
from wmpd.errors import ModelLoadError
from wmpd.imaging import PreprocessSpec

logger = logging.getLogger(__name__)

TEXT_CACHE_SIZE = 1024
# Queries (text, or one uploaded image) run single-threaded. A short text sequence gains
# little from a second thread, and whenever the cores are busy (indexing, other programs)
# each of the ~100 parallel regions of a forward pass waits for a descheduled partner:
# measured on a loaded 2-core machine, 690 ms per text query with 2 threads, 34 ms with 1.
# torch's thread count is per calling thread (OpenMP), so indexing keeps model.threads.
QUERY_THREADS = 1
# A batch of images is split into one single-threaded stream per core rather than run
# with one multi-threaded team. Measured while decoding competes for the same cores: the
# team's barriers spin whenever a member is preempted (~200 CPU-ms per photo for model +
# decode, against ~160 with independent streams), and streams keep every core busy
# without the team's lock-step.
MIN_IMAGES_PER_STREAM = 4
# Text queries that arrive together share one forward pass (see _TextBatcher).
MAX_TEXT_BATCH = 32
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def is_config_path(name: str) -> bool:
    return name.endswith(".json")


def is_checkpoint_path(pretrained: str) -> bool:
    return os.sep in pretrained or "/" in pretrained or pretrained.endswith(_CHECKPOINT_SUFFIXES)


@cache
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _file_digest(path: str) -> str:
    stat = os.stat(path)
    return _file_sha256(path, stat.st_size, stat.st_mtime_ns)[:16]


def model_id_for(config: ModelConfig) -> str:
    """A stable id for the weights: vectors from different ids are never mixed.

    Built-in names and hub tags are ids by themselves; local files are identified by
    their content so that retraining a checkpoint in place re-embeds the collection.
    """
    try:
        if is_config_path(config.name):
            name = f"{Path(config.name).stem}#{_file_digest(config.name)}"
        else:
            name = config.name
        if config.pretrained is None:
            weights = "random"
        elif is_checkpoint_path(config.pretrained):
            weights = f"{Path(config.pretrained).name}#{_file_digest(config.pretrained)}"
        else:
            weights = config.pretrained
    except OSError as exc:
        raise ModelLoadError(
            f"cannot read the model file {exc.filename}: {exc.strerror}; check model.name and "
            f"model.pretrained in the config"
        ) from exc
    suffix = "" if config.precision == "fp32" else f"@{config.precision}"
    return f"{name}/{weights}{suffix}"


class Embedder:
    """Encodes images and text with one open_clip model; thread-safe after load()."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.model_id = model_id_for(config)
        self._model: Any = None
        self._tokenizer: Any = None
        self._spec: PreprocessSpec | None = None
        self._dim = 0
        self._lock = threading.Lock()
        self._batch_threads = 0
        self._streams: ThreadPoolExecutor | None = None
        self._text_batcher = _TextBatcher(self.encode_texts, MAX_TEXT_BATCH)
        self._text_cache: OrderedDict[str, np.ndarray] = OrderedDict()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def spec(self) -> PreprocessSpec:
        if self._spec is None:
            raise ModelLoadError("the model is not loaded yet")
        return self._spec

    @property
    def dim(self) -> int:
        return self._dim

    def load(self) -> None:
        """Load the weights; raises ModelLoadError saying what went wrong and what to do."""
        import open_clip
        import torch

        if self.config.threads > 0:
            torch.set_num_threads(self.config.threads)
        self._batch_threads = torch.get_num_threads()
        name = self._register_config()
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                name,
                pretrained=self.config.pretrained,
                precision="bf16" if self.config.precision == "bf16" else "fp32",
                device=self.config.device,
            )
        except Exception as exc:  # open_clip raises RuntimeError, OSError, HF errors...
            raise ModelLoadError(_explain_load_failure(self.config, exc)) from exc
        model.eval()
        if self.config.precision == "int8":
            model = _quantize_int8(model)
            _return_freed_memory()
        self._spec = _spec_from_preprocess(preprocess)
        self._tokenizer = open_clip.get_tokenizer(name)
        with torch.inference_mode():
            probe = self._tokenizer(["a photo"])
            self._dim = int(model.encode_text(probe.to(self.config.device)).shape[-1])
        self._model = model
        if self.config.pretrained is None:
            logger.warning(
                "model.pretrained is null: the model has RANDOM weights and search results "
                "will be meaningless (fine for benchmarks only)"
            )
        logger.info("model %s loaded (dim %d)", self.model_id, self._dim)

    def _register_config(self) -> str:
        if not is_config_path(self.config.name):
            return self.config.name
        import open_clip

        path = Path(self.config.name)
        try:
            json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"model.name {path} is not a readable open_clip model config JSON: {exc}"
            ) from exc
        open_clip.add_model_config(path)
        return path.stem

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) float32 preprocessed pixels → (N, D) unit vectors."""
        streams = min(self._batch_threads, len(pixels) // MIN_IMAGES_PER_STREAM)
        if streams <= 1 or self.config.device != "cpu":
            threads = QUERY_THREADS if len(pixels) == 1 else self._batch_threads
            return self._encode_image_batch(pixels, threads)
        chunks = np.array_split(pixels, streams)
        pool = self._stream_pool()
        parts = pool.map(lambda chunk: self._encode_image_batch(chunk, 1), chunks)
        return np.concatenate(list(parts))

    def _encode_image_batch(self, pixels: np.ndarray, threads: int) -> np.ndarray:
        import torch

        model = self._require_model()
        _use_threads(threads)
        with torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
            batch = batch.to(self.config.device, dtype=_model_dtype(model))
            features = model.encode_image(batch)
        return _normalise(features.float().cpu().numpy())

    def _stream_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._streams is None:
                # Created by the first batch's caller (the indexing thread), whose
                # scheduling priority the stream threads inherit.
                self._streams = ThreadPoolExecutor(
                    self._batch_threads, thread_name_prefix="wmpd-model"
                )
            return self._streams

    def encode_text(self, text: str) -> np.ndarray:
        """One query string → (D,) unit vector, from an LRU cache when seen before."""
        with self._lock:
            cached = self._text_cache.get(text)
            if cached is not None:
                self._text_cache.move_to_end(text)
                return cached
        vector = self._text_batcher.encode(text)
        vector.setflags(write=False)
        with self._lock:
            self._text_cache[text] = vector
            while len(self._text_cache) > TEXT_CACHE_SIZE:
                self._text_cache.popitem(last=False)
        return vector

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Strings → (N, D) unit vectors, encoded together on the calling thread."""
        import torch

        model = self._require_model()
        _use_threads(QUERY_THREADS)
        tokens = self._tokenizer(list(texts)).to(self.config.device)
        with torch.inference_mode():
            features = _encode_text_truncated(model, tokens)
        return _normalise(features.float().cpu().numpy())

    def _require_model(self) -> Any:
        if self._model is None:
            raise ModelLoadError("the model is not loaded yet")
        return self._model


class _TextBatcher:
    """One thread encodes text queries, taking every query waiting at once as one batch.

    A short query's cost is mostly reading the text tower's weights, so a batch costs far
    less than its queries one by one (measured, one thread: 8 queries ~2.5x one query),
    and concurrent clients stop competing for the cores. A lone query waits for nothing.
    """

    def __init__(self, encode: Callable[[list[str]], np.ndarray], max_batch: int) -> None:
        self._encode = encode
        self._max_batch = max_batch
        self._queue: queue.Queue[tuple[str, Future[np.ndarray]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def encode(self, text: str) -> np.ndarray:
        future: Future[np.ndarray] = Future()
        self._queue.put((text, future))
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="wmpd-text", daemon=True)
                self._thread.start()
        return future.result()

    def _serve(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._run(batch)

    def _run(self, batch: list[tuple[str, Future[np.ndarray]]]) -> None:
        texts = list(dict.fromkeys(text for text, _ in batch))  # concurrent repeats once
        try:
            vectors = self._encode(texts)
        except BaseException as exc:  # each caller gets the error (a model error, a bad text)
            for _, future in batch:
                future.set_exception(exc)
            return
        row = {text: n for n, text in enumerate(texts)}
        for text, future in batch:
            future.set_result(vectors[row[text]].copy())


def _use_threads(count: int) -> None:
    """Set this thread's torch thread count (only when it differs: setting is not free)."""
    import torch

    if count > 0 and torch.get_num_threads() != count:
        torch.set_num_threads(count)


def _encode_text_truncated(model: Any, tokens: Any) -> Any:
    """Encode text with the sequence cut right after the last end-of-text token.

    CLIP's text attention is causal and pooling reads the end-of-text position, so the
    padding after it cannot change the result; skipping it makes short queries ~2.5x
    faster. Models of another shape go through open_clip's own encode_text.
    """
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final")
    mask = getattr(model, "attn_mask", None)
    if (
        not all(hasattr(model, attr) for attr in needed)
        or getattr(model, "text_pool_type", "argmax") != "argmax"
        or mask is None
    ):
        return model.encode_text(tokens)
    length = int(tokens.argmax(dim=-1).max().item()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=mask[:length, :length])
    x = model.ln_final(x)
    import torch

    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    projection = model.text_projection
    if projection is None:
        return x
    if isinstance(projection, torch.nn.Linear):
        return projection(x)
    return x @ projection


def _quantize_int8(model: Any) -> Any:
    """Dynamic int8 quantisation of every Linear layer (weights int8, activations float).

    open_clip asks a block's `mlp.c_fc.weight.dtype` for the dtype to compute in, and a
    quantised Linear has no such tensor; `int8_original_dtype` is open_clip's own hook
    for int8 layers, so the blocks keep computing in float32.
    """
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig

    # In place: a copy would hold the float32 model twice (measured: peak 2.1 GB instead
    # of 1.5 GB for ViT-B-32). Per-channel scales follow each output channel's range, so a
    # few large channels in trained weights do not flatten the rest.
    quantized = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
        model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True
    )
    for module in quantized.modules():
        fc = getattr(getattr(module, "mlp", None), "c_fc", None)
        if fc is not None and not isinstance(fc, torch.nn.Linear):
            fc.int8_original_dtype = torch.float32
    return quantized


def _return_freed_memory() -> None:
    """Hand the replaced float32 weights back to the OS (glibc keeps freed heap otherwise).

    Measured for ViT-B-32 int8: resident memory 1584 -> 1476 MB. A no-op off glibc.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _model_dtype(model: Any) -> Any:
    """The dtype image input must have: that of the first layer's weights.

    With bf16, open_clip converts convolutions and linear layers but keeps embeddings
    and norms in float32, so the first parameter found is not the one to go by.
    """
    import torch

    weight = getattr(getattr(getattr(model, "visual", None), "conv1", None), "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dtype.is_floating_point:
        return weight.dtype
    try:
        dtype = next(model.visual.parameters()).dtype
    except (AttributeError, StopIteration):
        return torch.float32
    return dtype if dtype.is_floating_point else torch.float32


def _spec_from_preprocess(preprocess: Any) -> PreprocessSpec:
    """Read the input size and normalisation out of open_clip's eval transform."""
    size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    for step in getattr(preprocess, "transforms", []):
        if type(step).__name__ == "CenterCrop":
            crop = step.size
            size = int(crop[0] if isinstance(crop, (tuple, list)) else crop)
        if type(step).__name__ == "Normalize":
            mean = (float(step.mean[0]), float(step.mean[1]), float(step.mean[2]))
            std = (float(step.std[0]), float(step.std[1]), float(step.std[2]))
    if size is None or mean is None or std is None:
        raise ModelLoadError(
            "the model's preprocessing is not the usual resize + centre-crop + normalise; "
            "wmpd cannot reproduce it"
        )
    return PreprocessSpec(image_size=size, mean=mean, std=std)


def _normalise(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    normalised: np.ndarray = (features / np.maximum(norms, 1e-12)).astype(np.float32)
    return normalised


def _explain_load_failure(config: ModelConfig, exc: Exception) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    base = f"cannot load model {config.name!r} with pretrained={config.pretrained!r}: {exc}."
    if config.pretrained is not None and is_checkpoint_path(config.pretrained):
        return (
            f"{base} Check that model.pretrained points at an open_clip checkpoint made for "
            f"the architecture in model.name."
        )
    if offline:
        return (
            f"{base} HF_HUB_OFFLINE=1 is set and the weights are not in the cache: run once "
            f"with network access to cache them, or set model.pretrained to a local "
            f"checkpoint file."
        )
    return (
        f"{base} The weights are downloaded from the Hugging Face hub on first use: check the "
        f"network, or download the checkpoint elsewhere and set model.pretrained to its path."
    )
