"""Train the tiny CLIP that the tests ship, on procedural scenes from ``scenes.py``.

The model is an ordinary open_clip CLIP built from ``tiny-clip.json`` and trained from
scratch with a symmetric contrastive loss, so the product loads it exactly like real
weights. Everything is seeded; a rerun on the same torch build gives the same weights.

    HF_HUB_OFFLINE=1 .venv/bin/python tests/models/train_tiny_clip.py \
        --steps 1500 --out tests/models/tiny-clip.pt
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import open_clip
import torch
import torch.nn.functional as F
from open_clip import CLIP
from PIL import Image

if __package__ in (None, ""):
    # Run as a script: make `tests.models.scenes` importable from the repository root.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.models import scenes

MODEL_NAME = "tiny-clip"
CONFIG_PATH = Path(__file__).with_name("tiny-clip.json")
DEFAULT_OUT = Path(__file__).with_name("tiny-clip.pt")
TRAIN_SEED = 0
EVAL_SEED = 1_000_003  # far from any training stream, so evaluation scenes are unseen
PARTIAL_CAPTION_RATE = 0.2  # share of captions naming only the colour or only the shape
LARGE_RENDER_RATE = 0.5  # share rendered bigger than the model input and shrunk by preprocess

Preprocess = Callable[[Image.Image], torch.Tensor]
Tokenizer = Callable[[Sequence[str]], torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1500
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.1
    eval_every: int = 250


@dataclass(frozen=True)
class Batch:
    images: torch.Tensor
    tokens: torch.Tensor
    positives: torch.Tensor  # [images, texts] bool: caption j is true of image i


def load_untrained() -> tuple[CLIP, Preprocess, Tokenizer]:
    """The tiny-clip architecture with fresh weights, its eval preprocess and tokenizer."""
    open_clip.add_model_config(CONFIG_PATH)
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME)
    return model, preprocess, open_clip.get_tokenizer(MODEL_NAME)


def image_size_of(model: CLIP) -> int:
    size = model.visual.image_size
    return int(size[0] if isinstance(size, tuple) else size)


def render_training_image(
    colour: str, shape: str, background: str, input_size: int, rng: random.Random
) -> Image.Image:
    # Half the scenes come at bigger sizes and other aspect ratios so the model also
    # learns what a large photo looks like once the preprocess has shrunk and cropped it.
    if rng.random() < LARGE_RENDER_RATE:
        size = rng.randint(input_size + 1, input_size * 4)
        return scenes.render_scene(
            colour, shape, background, size, rng, aspect=rng.uniform(0.7, 1.5)
        )
    return scenes.render_scene(colour, shape, background, input_size, rng)


def make_batch(
    batch_size: int,
    input_size: int,
    preprocess: Preprocess,
    tokenizer: Tokenizer,
    rng: random.Random,
) -> Batch:
    combos = [
        (
            rng.choice(list(scenes.COLOURS)),
            rng.choice(scenes.SHAPES),
            rng.choice(list(scenes.BACKGROUNDS)),
        )
        for _ in range(batch_size)
    ]
    images = torch.stack(
        [preprocess(render_training_image(*combo, input_size, rng)) for combo in combos]
    )
    captions = [scenes.describe(*combo, rng, partial_rate=PARTIAL_CAPTION_RATE) for combo in combos]
    positives = torch.tensor([[cap.matches(*combo) for cap in captions] for combo in combos])
    return Batch(images, tokenizer([cap.text for cap in captions]), positives)


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    positives: torch.Tensor,
) -> torch.Tensor:
    """Symmetric CLIP cross-entropy whose targets spread over every true caption/image.

    With 40 colour x shape pairs a batch of 128 repeats pairs; plain one-hot targets
    would push apart an image and a caption that describes it correctly.
    """
    logits = logit_scale.exp() * image_features @ text_features.T
    targets = positives.float()
    image_to_text = F.cross_entropy(logits, targets / targets.sum(1, keepdim=True))
    text_to_image = F.cross_entropy(logits.T, targets.T / targets.T.sum(1, keepdim=True))
    return (image_to_text + text_to_image) / 2


def make_optimizer(model: CLIP, config: TrainConfig) -> torch.optim.AdamW:
    # As in open_clip's trainer: no decay on gains, biases and the temperature.
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        skip = param.ndim < 2 or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if skip else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98), eps=1e-6)


def learning_rate(step: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


def train_step(model: CLIP, optimizer: torch.optim.Optimizer, batch: Batch) -> float:
    image_features = model.encode_image(batch.images, normalize=True)
    text_features = model.encode_text(batch.tokens, normalize=True)
    loss = contrastive_loss(image_features, text_features, model.logit_scale, batch.positives)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))  # CLIP's cap on the temperature
    return loss.item()


@dataclass(frozen=True)
class Evaluation:
    text_to_image_r1: float  # share of colour x shape queries whose top image matches
    pair_accuracy: float  # share of images whose best colour x shape query is right
    colour_accuracy: float
    shape_accuracy: float

    def __str__(self) -> str:
        return (
            f"text->image R@1 {self.text_to_image_r1:.3f}  pair acc {self.pair_accuracy:.3f}  "
            f"colour acc {self.colour_accuracy:.3f}  shape acc {self.shape_accuracy:.3f}"
        )


def held_out_scenes(
    render_size: int, seed: int = EVAL_SEED
) -> list[tuple[tuple[str, str, str], Image.Image]]:
    """One unseen render of every colour x shape x background triple."""
    rng = random.Random(seed)
    aspect = 1.0 if render_size <= 64 else 4 / 3
    return [
        (combo, scenes.render_scene(*combo, render_size, rng, aspect=aspect))
        for combo in scenes.all_combos()
    ]


@torch.no_grad()
def evaluate(
    model: CLIP, preprocess: Preprocess, tokenizer: Tokenizer, render_size: int
) -> Evaluation:
    was_training = model.training
    model.eval()
    held_out = held_out_scenes(render_size)
    labels = [combo for combo, _ in held_out]
    images = model.encode_image(torch.stack([preprocess(im) for _, im in held_out]), normalize=True)

    def text(queries: list[str]) -> torch.Tensor:
        features: torch.Tensor = model.encode_text(tokenizer(queries), normalize=True)
        return features

    pairs = [(c, s) for c in scenes.COLOURS for s in scenes.SHAPES]
    pair_sims = text([scenes.query_for(c, s) for c, s in pairs]) @ images.T
    top_images = pair_sims.argmax(1).tolist()
    r1 = sum(labels[i][:2] == pair for i, pair in zip(top_images, pairs, strict=True))
    best_pairs = pair_sims.argmax(0).tolist()
    pair_acc = sum(pairs[p] == label[:2] for p, label in zip(best_pairs, labels, strict=True))
    colours = list(scenes.COLOURS)
    colour_best = (text([f"a {c} shape" for c in colours]) @ images.T).argmax(0).tolist()
    colour_acc = sum(colours[k] == label[0] for k, label in zip(colour_best, labels, strict=True))
    shapes = list(scenes.SHAPES)
    shape_best = (text([f"a photo of a {s}" for s in shapes]) @ images.T).argmax(0).tolist()
    shape_acc = sum(shapes[k] == label[1] for k, label in zip(shape_best, labels, strict=True))
    model.train(was_training)
    n = len(labels)
    return Evaluation(r1 / len(pairs), pair_acc / n, colour_acc / n, shape_acc / n)


def save_half(model: CLIP, out: Path) -> None:
    # fp16 halves the file; open_clip's load_checkpoint copies it into an fp32 model.
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, out)


def train(config: TrainConfig, out: Path) -> None:
    torch.manual_seed(TRAIN_SEED)
    rng = random.Random(TRAIN_SEED)
    model, preprocess, tokenizer = load_untrained()
    input_size = image_size_of(model)
    optimizer = make_optimizer(model, config)
    params = sum(p.numel() for p in model.parameters())
    print(f"tiny-clip: {params / 1e6:.2f}M params, {input_size} px, {config}", flush=True)
    started = time.perf_counter()
    model.train()
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        batch = make_batch(config.batch_size, input_size, preprocess, tokenizer, rng)
        loss = train_step(model, optimizer, batch)
        if step % 25 == 0 or step == config.steps - 1:
            elapsed = time.perf_counter() - started
            print(
                f"step {step:5d}  loss {loss:.4f}  scale {model.logit_scale.exp():.1f}  "
                f"{elapsed:7.1f}s",
                flush=True,
            )
        if (step + 1) % config.eval_every == 0 and step + 1 < config.steps:
            print(f"  eval 64px: {evaluate(model, preprocess, tokenizer, input_size)}", flush=True)
    train_seconds = time.perf_counter() - started
    model.eval()
    save_half(model, out)
    report(out, tokenizer, input_size, train_seconds)


def report(out: Path, tokenizer: Tokenizer, input_size: int, train_seconds: float) -> None:
    # Evaluate the saved file through open_clip's own loader, as the product will.
    model, _, loaded_preprocess = open_clip.create_model_and_transforms(
        MODEL_NAME, pretrained=str(out)
    )
    model.eval()
    print(
        f"saved {out} ({out.stat().st_size / 1e6:.2f} MB), trained in {train_seconds / 60:.1f} min"
    )
    for size in (input_size, 512):
        print(f"held-out {size}px: {evaluate(model, loaded_preprocess, tokenizer, size)}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    train(TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr), args.out)
    print(f"wall time {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
