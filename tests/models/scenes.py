"""Deterministic procedural scenes: one coloured shape on a background.

The tiny test CLIP is trained on these scenes and the end-to-end tests search them,
so everything here is a pure function of its arguments and the ``random.Random``
passed in (no global RNG, no PIL noise generators, which use C's ``rand()``).

Scenes are scale-invariant: a scene rendered at 512 px and shrunk to 64 px looks
like the same scene rendered at 64 px, because textures, outlines and the shape are
all sized relative to the image. The shape always lies inside the central square of
the image, so a centre crop (what CLIP preprocessing does) never cuts it away.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

RGB = tuple[int, int, int]

# Saturated, far-apart hues so that a small jitter never moves one colour into another.
COLOURS: dict[str, RGB] = {
    "red": (215, 30, 35),
    "orange": (250, 135, 20),
    "yellow": (245, 220, 25),
    "green": (35, 175, 65),
    "blue": (30, 70, 220),
    "purple": (135, 45, 185),
    "pink": (250, 125, 195),
    "brown": (120, 70, 30),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart")


@dataclass(frozen=True)
class Background:
    """How a background is painted, and the outline that keeps a shape visible on it."""

    dark: RGB
    light: RGB
    texture: str  # "plain", "blades", "grain", "gradient" or "stars"
    outline: RGB
    phrases: tuple[str, ...]


# Grass is an olive green and sand a pale beige so that green and yellow shapes
# differ in hue and saturation from them; the outline separates them further.
BACKGROUNDS: dict[str, Background] = {
    "white": Background(
        (240, 240, 240), (252, 252, 252), "plain", (25, 25, 25), ("a white background",)
    ),
    "grass": Background(
        (55, 85, 25), (115, 140, 50), "blades", (250, 250, 250), ("grass", "the grass", "a lawn")
    ),
    "sky": Background(
        (80, 145, 225), (190, 220, 250), "gradient", (20, 20, 30), ("the sky", "a sky background")
    ),
    "night": Background(
        (8, 12, 30),
        (25, 30, 60),
        "stars",
        (245, 245, 245),
        ("a night background", "the night sky", "a dark background"),
    ),
    "sand": Background(
        (205, 180, 130),
        (235, 215, 170),
        "grain",
        (25, 25, 25),
        ("sand", "the beach", "a sandy background"),
    ),
}

COLOUR_JITTER = 12  # per channel; far below the distance between any two COLOURS
TEXTURE_CELLS = 40  # noise cells across the short side, independent of pixel size


def render_scene(
    colour: str,
    shape: str,
    background: str,
    size: int,
    rng: random.Random,
    *,
    aspect: float = 1.0,
) -> Image.Image:
    """Render one scene as an RGB image whose longer side is ``size`` pixels.

    ``aspect`` is width / height (1.0 gives a square). Position, scale, rotation and a
    small colour jitter come from ``rng``.
    """
    if colour not in COLOURS or shape not in SHAPES or background not in BACKGROUNDS:
        raise ValueError(f"unknown scene ({colour!r}, {shape!r}, {background!r})")
    width, height = _dimensions(size, aspect)
    bg = BACKGROUNDS[background]
    image = _paint_background(bg, width, height, rng)
    _draw_shape(image, shape, _jitter(COLOURS[colour], rng), bg.outline, rng)
    return image


def _dimensions(size: int, aspect: float) -> tuple[int, int]:
    if aspect >= 1.0:
        return size, max(8, round(size / aspect))
    return max(8, round(size * aspect)), size


def _jitter(rgb: RGB, rng: random.Random) -> RGB:
    r, g, b = (min(255, max(0, c + rng.randint(-COLOUR_JITTER, COLOUR_JITTER))) for c in rgb)
    return r, g, b


def _noise_mask(cols: int, rows: int, size: tuple[int, int], rng: random.Random) -> Image.Image:
    # Low-resolution noise scaled up: fast at 2000 px and the same look at every size.
    cells = Image.frombytes("L", (cols, rows), rng.randbytes(cols * rows))
    return cells.resize(size, Image.Resampling.BILINEAR)


def _paint_background(bg: Background, width: int, height: int, rng: random.Random) -> Image.Image:
    size = (width, height)
    short = min(width, height)
    cols = max(2, round(TEXTURE_CELLS * width / short))
    rows = max(2, round(TEXTURE_CELLS * height / short))
    dark, light = Image.new("RGB", size, bg.dark), Image.new("RGB", size, bg.light)
    if bg.texture == "plain":
        return light
    if bg.texture == "gradient":
        mask = Image.linear_gradient("L").resize(size, Image.Resampling.BILINEAR)
        return Image.composite(light, dark, mask)
    if bg.texture == "blades":
        # Tall thin cells give vertical streaks that read as grass blades.
        mask = _noise_mask(cols * 2, max(2, rows // 4), size, rng)
        return Image.composite(light, dark, mask)
    if bg.texture == "grain":
        return Image.composite(light, dark, _noise_mask(cols, rows, size, rng))
    image = Image.composite(
        light, dark, _noise_mask(max(2, cols // 8), max(2, rows // 8), size, rng)
    )
    _sprinkle_stars(image, rng)
    return image


def _sprinkle_stars(image: Image.Image, rng: random.Random) -> None:
    draw = ImageDraw.Draw(image)
    width, height = image.size
    radius = max(0.5, min(width, height) / 200)
    for _ in range(rng.randint(15, 40)):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        level = rng.randint(170, 255)
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=(level, level, level))


def _draw_shape(
    image: Image.Image, shape: str, fill: RGB, outline: RGB, rng: random.Random
) -> None:
    width, height = image.size
    short = min(width, height)
    radius = short * rng.uniform(0.24, 0.40)
    line = max(1, round(short / 40))
    # Keep the shape inside the central square so a centre crop never loses it.
    left, top = (width - short) / 2, (height - short) / 2
    slack = short / 2 - radius - line
    cx = left + short / 2 + rng.uniform(-slack, slack)
    cy = top + short / 2 + rng.uniform(-slack, slack)
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        draw.ellipse(box, fill=fill, outline=outline, width=line)
        return
    angle = math.radians(rng.uniform(-20.0, 20.0))
    points = [_place(x, y, cx, cy, radius, angle) for x, y in _unit_outline(shape)]
    # A wide rounded stroke under the fill gives a clean outside outline; PIL's own
    # polygon outline leaves notches at sharp corners such as star tips.
    draw.line([*points, points[0], points[1]], fill=outline, width=2 * line, joint="curve")
    draw.polygon(points, fill=fill)


def _place(
    x: float, y: float, cx: float, cy: float, radius: float, angle: float
) -> tuple[float, float]:
    cos, sin = math.cos(angle), math.sin(angle)
    return cx + radius * (x * cos - y * sin), cy + radius * (x * sin + y * cos)


def _unit_outline(shape: str) -> list[tuple[float, float]]:
    """Polygon for ``shape`` within the unit disc, y pointing down."""
    if shape == "square":
        s = 0.8
        return [(-s, -s), (s, -s), (s, s), (-s, s)]
    if shape == "triangle":
        return [(math.cos(a), math.sin(a) + 0.15) for a in _angles(3, -math.pi / 2)]
    if shape == "star":
        tips = _angles(10, -math.pi / 2)
        return [
            (r * math.cos(a), r * math.sin(a)) for a, r in zip(tips, [1.0, 0.42] * 5, strict=True)
        ]
    if shape == "heart":
        steps = [2 * math.pi * i / 48 for i in range(48)]
        return [
            (
                math.sin(t) ** 3,
                -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
                / 16
                + 0.1,
            )
            for t in steps
        ]
    raise ValueError(f"no outline for shape {shape!r}")


def _angles(count: int, start: float) -> list[float]:
    return [start + 2 * math.pi * i / count for i in range(count)]


@dataclass(frozen=True)
class Caption:
    """A caption and the attributes it mentions (None where it says nothing)."""

    text: str
    colour: str | None
    shape: str | None
    background: str | None

    def matches(self, colour: str, shape: str, background: str) -> bool:
        """True when every attribute the caption mentions holds for the scene."""
        return (
            self.colour in (None, colour)
            and self.shape in (None, shape)
            and self.background in (None, background)
        )


_PLAIN_TEMPLATES = (
    "{a} {c} {s}",
    "{c} {s}",
    "a photo of {a} {c} {s}",
    "a picture of {a} {c} {s}",
    "an image of {a} {c} {s}",
    "a drawing of {a} {c} {s}",
    "the {c} {s}",
)
_BACKGROUND_TEMPLATES = (
    "{a} {c} {s} on {bg}",
    "a photo of {a} {c} {s} on {bg}",
    "{c} {s} on {bg}",
    "{a} {c} {s} against {bg}",
)
_COLOUR_TEMPLATES = ("something {c}", "{a} {c} shape", "{a} {c} thing", "{c}")
_SHAPE_TEMPLATES = ("a {s}", "a photo of a {s}", "{s}", "a {s} shape")


def _article(word: str, rng: random.Random) -> str:
    # Both forms occur in queries people type ("a orange star"), so train on both.
    if word[0] in "aeiou" and rng.random() < 0.7:
        return "an"
    return "a"


def describe(
    colour: str,
    shape: str,
    background: str,
    rng: random.Random,
    *,
    partial_rate: float = 0.0,
) -> Caption:
    """A varied caption for a scene; with ``partial_rate`` it may name colour or shape only."""
    roll = rng.random()
    if roll < partial_rate / 2:
        template = rng.choice(_COLOUR_TEMPLATES)
        return Caption(template.format(a=_article(colour, rng), c=colour), colour, None, None)
    if roll < partial_rate:
        return Caption(rng.choice(_SHAPE_TEMPLATES).format(s=shape), None, shape, None)
    a = _article(colour, rng)
    if rng.random() < 0.4:
        bg_phrase = rng.choice(BACKGROUNDS[background].phrases)
        template = rng.choice(_BACKGROUND_TEMPLATES)
        text = template.format(a=a, c=colour, s=shape, bg=bg_phrase)
        return Caption(text, colour, shape, background)
    return Caption(rng.choice(_PLAIN_TEMPLATES).format(a=a, c=colour, s=shape), colour, shape, None)


def caption_for(colour: str, shape: str, background: str, rng: random.Random) -> str:
    """A varied caption naming the colour and shape, sometimes the background too."""
    return describe(colour, shape, background, rng).text


def query_for(colour: str, shape: str) -> str:
    """The canonical search query for a colour and shape, as the evaluations use it."""
    return f"a photo of a {colour} {shape}"


def all_combos() -> list[tuple[str, str, str]]:
    """Every (colour, shape, background) triple, in a fixed order."""
    return [(c, s, b) for c in COLOURS for s in SHAPES for b in BACKGROUNDS]
