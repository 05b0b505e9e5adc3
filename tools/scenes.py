"""A captioned dataset of simple scenes, deterministic from a seed: what the built-in model learns to draw.

64x64 pictures of one shape (circle, square, triangle; optionally two shapes) in one of 6 colours, 2 sizes
and 9 positions (a 3x3 grid) with a little jitter, on a white, light grey or cream background. Captions are
a canonical template, "a small red circle at the top left on a white background", and paraphrases of it.
Some colour-shape pairs (HELD_OUT) never appear in training, so evaluation can test generalisation.

    python tools/scenes.py --out scenes.png      # a preview grid, its captions printed in grid order
"""

from __future__ import annotations

import argparse
import itertools
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image

SIZE = 64
COLOURS = {
    "red": (215, 35, 35),
    "green": (30, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 200, 20),
    "purple": (135, 50, 180),
    "orange": (245, 130, 15),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 16.0, "large": 30.0}  # side of the bounding box in pixels
# A 3x3 grid; cells meet at 24 and 40, so a centre jittered by JITTER stays 5 px inside its cell.
POSITIONS = {
    "top left": (16, 16),
    "top": (32, 16),
    "top right": (48, 16),
    "left": (16, 32),
    "center": (32, 32),
    "right": (48, 32),
    "bottom left": (16, 48),
    "bottom": (32, 48),
    "bottom right": (48, 48),
}
BACKGROUNDS = {"white": (255, 255, 255), "light grey": (220, 220, 220), "cream": (250, 240, 215)}
HELD_OUT = (("green", "triangle"), ("purple", "circle"), ("orange", "square"))  # never in training
JITTER = 3.0  # largest centre offset in pixels, so a position is a region, not a point
SIZE_JITTER = 0.06  # largest relative change of the extent
MARGIN = 1.0  # pixels kept free at the image border
TWO_OBJECT_FRACTION = 0.2  # of scenes when two_objects=True

# (one object, the whole scene, how objects are joined). Style 0 is canonical; every style names each
# attribute value literally, so parse_caption reads them all.
TEMPLATES = (
    ("a {size} {colour} {shape} at the {position}", "{things} on a {background} background", " and "),
    ("a {colour} {shape}, {size}, {position}", "{things}, {background} background", " and "),
    ("{size} {colour} {shape} in the {position}{part}", "{things} on {background}", " and "),
    ("{position}: a {size} {colour} {shape}", "{things} on {background}", "; "),
    ("a {size} {colour} {shape} at the {position}", "{things}", " and "),
    ("a {size} {colour} {shape}, {position}", "{background} background, {things}", " and "),
)


def _part(position: str) -> str:
    """'in the top left corner', 'in the top part', 'in the center'."""
    return " corner" if " " in position else "" if position == "center" else " part"


_Y, _X = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + np.float32(0.5)  # pixel centres


@dataclass(frozen=True)
class Thing:
    """One shape; cx, cy, extent are the exact bounding box after jitter (pixels, y down)."""

    colour: str
    shape: str
    size: str
    position: str
    cx: float
    cy: float
    extent: float

    @classmethod
    def nominal(cls, colour: str, shape: str, size: str, position: str) -> Thing:
        """The thing as a caption describes it: at its anchor, of its nominal extent."""
        return cls(colour, shape, size, position, *map(float, POSITIONS[position]), SIZES[size])

    def attributes(self) -> tuple[str, str, str, str]:
        return self.colour, self.shape, self.size, self.position

    def describe(self, style: int) -> str:
        return TEMPLATES[style][0].format(
            size=self.size, colour=self.colour, shape=self.shape, position=self.position, part=_part(self.position)
        )

    def coverage(self) -> np.ndarray:
        """(64, 64) float32 fraction of each pixel the shape covers: 0.5 minus a signed distance, clipped.

        A distance field anti-aliases as well as supersampling and costs one pass."""
        dx, dy, r = _X - np.float32(self.cx), _Y - np.float32(self.cy), np.float32(self.extent / 2)
        if self.shape == "circle":
            d = np.hypot(dx, dy) - r
        elif self.shape == "square":
            d = np.maximum(np.abs(dx), np.abs(dy)) - r
        else:  # apex up, base as wide as the triangle is tall; sides have slope 2, normals (+-2, -1) / sqrt(5)
            side = (2 * np.abs(dx) - (dy + r)) * np.float32(1 / np.sqrt(5))
            d = np.maximum(side, dy - r)
        return np.clip(0.5 - d, 0, 1)


@dataclass(frozen=True)
class Scene:
    """One or two things on a background. colour/shape/size/position are those of the first thing."""

    things: tuple[Thing, ...]
    background: str | None  # None only for a parsed caption that names no background

    colour = property(lambda self: self.things[0].colour)
    shape = property(lambda self: self.things[0].shape)
    size = property(lambda self: self.things[0].size)
    position = property(lambda self: self.things[0].position)

    def caption(self, style: int = 0) -> str:
        thing, scene, join = TEMPLATES[style]
        things = join.join(t.describe(style) for t in self.things)
        return re.sub(r"\ba (?=[aeiou])", "an ", scene.format(things=things, background=self.background))

    def nominal(self) -> Scene:
        """Without jitter: what parse_caption(self.caption(...)) returns."""
        return replace(self, things=tuple(Thing.nominal(*t.attributes()) for t in self.things))

    def array(self) -> np.ndarray:
        """(64, 64, 3) uint8."""
        image = np.empty((SIZE, SIZE, 3), np.float32)
        image[:] = BACKGROUNDS[self.background]
        for thing in self.things:
            alpha = thing.coverage()[..., None]
            image = image * (1 - alpha) + np.array(COLOURS[thing.colour], np.float32) * alpha
        return np.rint(image).astype(np.uint8)

    def render(self) -> Image.Image:
        return Image.fromarray(self.array())


def _pairs(held_out: bool | None) -> list[tuple[str, str]]:
    pairs = list(itertools.product(COLOURS, SHAPES))
    return [p for p in pairs if held_out is None or (p in HELD_OUT) == held_out]


def all_scenes(held_out: bool | None = False) -> list[Scene]:
    """Every one-object attribute combination without jitter: training (False), held-out (True) or all (None)."""
    return [
        Scene((Thing.nominal(c, s, z, p),), b)
        for (c, s), z, p, b in itertools.product(_pairs(held_out), SIZES, POSITIONS, BACKGROUNDS)
    ]


def held_out_scenes() -> list[Scene]:
    """Every held-out combination once (3 pairs x 2 sizes x 9 positions x 3 backgrounds), for evaluation."""
    return all_scenes(held_out=True)


def _q(value: float) -> float:
    return round(value * 16) / 16  # 1/16 px: exact in binary, short in a repr


def _jittered(rng: random.Random, colour: str, shape: str, size: str, position: str) -> Thing:
    extent = _q(SIZES[size] * (1 + rng.uniform(-SIZE_JITTER, SIZE_JITTER)))
    lo, hi = extent / 2 + MARGIN, SIZE - extent / 2 - MARGIN  # keep the whole shape inside the picture
    cx, cy = (_q(min(max(a + rng.uniform(-JITTER, JITTER), lo), hi)) for a in POSITIONS[position])
    return Thing(colour, shape, size, position, cx, cy, extent)


def _apart(a: Thing, b: Thing, gap: float = 2.0) -> bool:
    """True if the bounding boxes are at least gap pixels apart along x or y."""
    half = (a.extent + b.extent) / 2 + gap
    return abs(a.cx - b.cx) >= half or abs(a.cy - b.cy) >= half


# Two objects go two grid steps apart along x or y (left/right, top/bottom, corners), never next to each other.
FAR = [
    (p, q)
    for p, q in itertools.permutations(POSITIONS, 2)
    if max(abs(POSITIONS[p][0] - POSITIONS[q][0]), abs(POSITIONS[p][1] - POSITIONS[q][1])) == 32
]


def random_scene(rng: random.Random, held_out: bool = False, objects: int = 1) -> Scene:
    """A scene from the training pairs (held_out=False) or the held-out pairs only (True)."""
    pairs = _pairs(held_out)
    background = rng.choice(list(BACKGROUNDS))
    positions = [rng.choice(list(POSITIONS))] if objects == 1 else list(rng.choice(FAR))
    while True:  # two objects: redraw the jitter until they do not touch (rarely more than once)
        things = tuple(_jittered(rng, *rng.choice(pairs), rng.choice(list(SIZES)), p) for p in positions)
        if objects == 1 or _apart(*things):
            return Scene(things, background)


def make_dataset(n: int, seed: int, held_out: bool = False, two_objects: bool = False) -> list[tuple[Scene, str]]:
    """n (scene, caption) pairs with jitter and a random caption style, the same for the same seed.

    held_out=False draws only training colour-shape pairs, True only HELD_OUT pairs. With two_objects,
    TWO_OBJECT_FRACTION of the scenes hold two shapes."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        objects = 2 if two_objects and rng.random() < TWO_OBJECT_FRACTION else 1
        scene = random_scene(rng, held_out, objects)
        out.append((scene, scene.caption(rng.randrange(len(TEMPLATES)))))
    return out


sample = make_dataset  # the name tools/train.py and tools/eval.py use


def _find(words: Sequence[str], text: str) -> list[str]:
    pattern = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))  # "top left" before "top"
    return re.findall(rf"\b(?:{pattern})\b", text)


def parse_caption(caption: str) -> Scene:
    """The scene a caption in any TEMPLATES style describes, without jitter (background None if unnamed).

    Raises ValueError if an object lacks one of colour, shape, size and position."""
    text = caption.lower()
    backgrounds = _find(BACKGROUNDS, text)
    for name in backgrounds:
        text = text.replace(name, " ")  # so "light grey" or a background word is not read as an attribute
    things = []
    for clause in re.split(r"\band\b|;", text):
        found = [_find(names, clause) for names in (COLOURS, SHAPES, SIZES, POSITIONS)]
        if not any(found):
            continue
        if any(len(f) != 1 for f in found):
            raise ValueError(f"cannot read colour, shape, size and position from {clause.strip()!r} in {caption!r}")
        things.append(Thing.nominal(*(f[0] for f in found)))
    if not things:
        raise ValueError(f"no object described in {caption!r}")
    return Scene(tuple(things), backgrounds[0] if backgrounds else None)


def render_batch(scenes: Sequence[Scene]) -> torch.Tensor:
    """(N, 3, 64, 64) float32 in [-1, 1]: what the model trains on."""
    array = np.stack([s.array() for s in scenes]).astype(np.float32) / 127.5 - 1
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images -> (N, 3, 64, 64) in [-1, 1]."""
    array = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images]) / 127.5 - 1
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def grid(images: Sequence[Image.Image], columns: int, scale: int = 1, gap: int = 0) -> Image.Image:
    """Images in rows of `columns`, each scaled up `scale` times (nearest, so pixels stay visible)."""
    w, h = images[0].size
    w, h = w * scale, h * scale
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (w + gap) - gap, rows * (h + gap) - gap), (128, 128, 128))
    for i, im in enumerate(images):
        sheet.paste(im.resize((w, h), Image.NEAREST), ((i % columns) * (w + gap), (i // columns) * (h + gap)))
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="scenes.png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--two-objects", action="store_true")
    parser.add_argument("--held-out", action="store_true", help="draw only the held-out colour-shape pairs")
    args = parser.parse_args()
    pairs = make_dataset(args.n, args.seed, held_out=args.held_out, two_objects=args.two_objects)
    grid([s.render() for s, _ in pairs], 8, scale=2, gap=2).save(args.out)
    for i, (_, caption) in enumerate(pairs):
        print(f"{i // 8},{i % 8}  {caption}")


if __name__ == "__main__":
    main()
