"""Score a picture of one shape for colour, shape, position and size: geometry, no learned model.

The object is the saturated pixels (backgrounds are white or grey); its colour is the nearest palette colour
of their median, its position the nearest of the 5 anchors to their centroid, its size from its extent and
its shape from how much of its bounding box it fills (square ~1, circle ~0.79, triangle ~0.5).

    python tools/judge.py        # the judge's own accuracy on ground-truth renders, clean and degraded
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).parent))
import scenes  # noqa: E402

ATTRIBUTES = ("colour", "shape", "position", "size")
MIN_PIXELS = 20  # fewer saturated pixels than this: no object


def judge(image: Image.Image) -> dict[str, str | None]:
    # A median filter removes speckle without moving edges; then vivid pixels are the shape, grey the background.
    rgb = np.asarray(image.convert("RGB").filter(ImageFilter.MedianFilter(3)), dtype=np.float32)
    mask = rgb.max(axis=2) - rgb.min(axis=2) > 70
    if mask.sum() < MIN_PIXELS:
        return dict.fromkeys(ATTRIBUTES)
    ys, xs = np.nonzero(mask)
    median = np.median(rgb[mask], axis=0)
    colour = min(scenes.COLOURS, key=lambda c: np.linalg.norm(median - np.array(scenes.COLOURS[c])))
    cx, cy = xs.mean(), ys.mean()
    position = min(scenes.POSITIONS, key=lambda p: np.hypot(cx - scenes.POSITIONS[p][0], cy - scenes.POSITIONS[p][1]))
    width, height = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    fill = mask.sum() / (width * height)
    shape = "square" if fill > 0.9 else "circle" if fill > 0.64 else "triangle"
    size = "large" if max(width, height) > 25 else "small"
    return {"colour": colour, "shape": shape, "position": position, "size": size}


def score(images: list[Image.Image], targets: list[scenes.Scene]) -> dict[str, float]:
    """Accuracy of each attribute, and of all four at once."""
    verdicts = [judge(im) for im in images]
    hits = {a: [v[a] == getattr(t, a) for v, t in zip(verdicts, targets, strict=True)] for a in ATTRIBUTES}
    hits["all"] = [all(h) for h in zip(*hits.values(), strict=True)]
    return {a: float(np.mean(h)) for a, h in hits.items()}


def degrade(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Noise, blur and a colour cast of the strength a generated image shows."""
    blurred = image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.0)))
    array = np.asarray(blurred, dtype=np.float32) * rng.uniform(0.9, 1.1, size=3) + rng.normal(0, 15, (64, 64, 3))
    return Image.fromarray(array.clip(0, 255).astype(np.uint8))


def main() -> None:
    pairs = scenes.sample(600, seed=123) + scenes.sample(200, seed=321, held_out=True)
    targets = [s for s, _ in pairs]
    clean = [s.render() for s in targets]
    rng = np.random.default_rng(0)
    print("clean   ", score(clean, targets))
    print("degraded", score([degrade(im, rng) for im in clean], targets))


if __name__ == "__main__":
    main()
