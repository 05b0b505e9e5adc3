"""A captioned dataset of simple scenes, deterministic from a seed: what the built-in model learns to draw.

64x64 pictures of one shape (circle, square, triangle) in one of 6 colours, 2 sizes and 5 positions, on a
white or light grey background, with captions such as "a small red circle at the top left on a white
background" and paraphrases. Some colour-shape pairs are held out of training to test generalisation.

    python tools/scenes.py --out scenes.png      # a preview grid with captions printed
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

SIZE = 64
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 50, 180),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 18, "large": 32}  # extent in pixels
POSITIONS = {
    "top left": (16, 16),
    "top right": (48, 16),
    "bottom left": (16, 48),
    "bottom right": (48, 48),
    "center": (32, 32),
}
BACKGROUNDS = {"white": (255, 255, 255), "light grey": (215, 215, 215)}
HELD_OUT = (("green", "triangle"), ("purple", "circle"), ("orange", "square"))  # never in training
JITTER = 3  # pixels of random offset, so positions are regions, not points
TEMPLATES = (
    "a {size} {colour} {shape} at the {position} on a {background} background",
    "a {size} {colour} {shape} at the {position}",
    "{size} {colour} {shape}, {position}, {background} background",
    "a {colour} {shape}, {size}, in the {position} of a {background} picture",
    "{position}: a {size} {colour} {shape}",
)


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    size: str
    position: str
    background: str
    dx: int = 0
    dy: int = 0

    def caption(self, template: int = 0) -> str:
        position = self.position if self.position != "center" or template == 4 else "center"
        return TEMPLATES[template].format(
            size=self.size, colour=self.colour, shape=self.shape, position=position, background=self.background
        )

    def render(self) -> Image.Image:
        """Drawn at 4x and downsampled, so edges are anti-aliased."""
        scale = 4
        image = Image.new("RGB", (SIZE * scale, SIZE * scale), BACKGROUNDS[self.background])
        draw = ImageDraw.Draw(image)
        cx, cy = (c * scale for c in POSITIONS[self.position])
        cx, cy = cx + self.dx * scale, cy + self.dy * scale
        r = SIZES[self.size] * scale / 2
        fill = COLOURS[self.colour]
        if self.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif self.shape == "square":
            s = r * 0.9  # squares look bigger than circles of the same extent
            draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
        return image.resize((SIZE, SIZE), Image.LANCZOS)


def all_scenes(held_out: bool | None = False) -> list[Scene]:
    """Every attribute combination (no jitter): training ones (False), held-out ones (True) or all (None)."""
    scenes = [
        Scene(c, s, z, p, b) for c in COLOURS for s in SHAPES for z in SIZES for p in POSITIONS for b in BACKGROUNDS
    ]
    return [x for x in scenes if held_out is None or ((x.colour, x.shape) in HELD_OUT) == held_out]


def sample(n: int, seed: int, held_out: bool = False) -> list[tuple[Scene, str]]:
    """n (scene, caption) pairs with jitter and a random caption template, the same for the same seed."""
    rng = random.Random(seed)
    pool = all_scenes(held_out)
    out = []
    for _ in range(n):
        base = rng.choice(pool)
        scene = Scene(**{**base.__dict__, "dx": rng.randint(-JITTER, JITTER), "dy": rng.randint(-JITTER, JITTER)})
        out.append((scene, scene.caption(rng.randrange(len(TEMPLATES)))))
    return out


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL images -> (N, 3, 64, 64) in [-1, 1]."""
    array = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def grid(images: list[Image.Image], columns: int) -> Image.Image:
    rows = (len(images) + columns - 1) // columns
    w, h = images[0].size
    sheet = Image.new("RGB", (columns * w, rows * h), (255, 255, 255))
    for i, im in enumerate(images):
        sheet.paste(im, ((i % columns) * w, (i // columns) * h))
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="scenes.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pairs = sample(32, args.seed)
    grid([s.render() for s, _ in pairs], 8).resize((8 * 128, 4 * 128), Image.NEAREST).save(args.out)
    for i, (_, caption) in enumerate(pairs):
        print(i, caption)


if __name__ == "__main__":
    main()
