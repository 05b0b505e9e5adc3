"""Score a picture of shapes for colour, shape, position and size: geometry, no learned model.

The background is the median of the image border; objects are the connected regions far from it. Each
object's colour is its core's nearest palette colour in CIELAB (lightness weighted down, so hue decides);
how much of each pixel it covers is measured along the line from background to object colour, which gives
its exact bounding box, area and centre despite anti-aliasing, blur and noise. Position is the 3x3 grid cell
of the box centre, size the longer box side, shape from the area it fills of its box (square 1, circle 0.79,
triangle 0.5) and how much of it lies in the top half (triangle 0.25, the others 0.5).

    python tools/judge.py        # the judge's own accuracy on ground-truth renders, clean and degraded
"""

from __future__ import annotations

import io
import itertools
import sys
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).parent))
import scenes  # noqa: E402

ATTRIBUTES = ("colour", "shape", "position", "size")
BORDER = 2  # pixels of border the background is estimated from
BORDER_AGREEMENT = 0.5  # at least this fraction of the border must match its median, else it is not a background
OBJECT_DISTANCE = 45.0  # RGB distance from the background that makes a pixel part of an object
MIN_AREA = 30  # pixels; smaller regions are specks
MIN_CONTRAST = 60.0  # RGB distance of an object's colour from the background
MIN_CHROMA = 20.0  # CIELAB chroma; greyer objects have no palette colour
LIGHTNESS_WEIGHT = 0.5  # in the colour distance: a darker or lighter red is still red
LARGE = 23.0  # pixels of extent between small (16) and large (30)
CELL_EDGES = (24.0, 40.0)  # the 3x3 grid's cell boundaries, in 64-pixel coordinates


def to_array(image: Image.Image | np.ndarray | torch.Tensor) -> np.ndarray:
    """(64, 64, 3) uint8 from a PIL image, an (H, W, 3) uint8 array or a (3, H, W) tensor in [-1, 1]."""
    if isinstance(image, torch.Tensor):
        image = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image.astype(np.uint8))
    image = image.convert("RGB")
    if image.size != (scenes.SIZE, scenes.SIZE):
        image = image.resize((scenes.SIZE, scenes.SIZE), Image.BOX)
    return np.asarray(image)


def _lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (..., 3) in 0..255 -> CIELAB (D65)."""
    c = np.asarray(rgb, np.float64) / 255
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = c @ np.array([[0.4124, 0.2126, 0.0193], [0.3576, 0.7152, 0.1192], [0.1805, 0.0722, 0.9505]])
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


PALETTE = {name: _lab(rgb) for name, rgb in scenes.COLOURS.items()}
BACKGROUND_LAB = {name: _lab(rgb) for name, rgb in scenes.BACKGROUNDS.items()}


def _colour_distance(a: np.ndarray, b: np.ndarray) -> float:
    d = a - b
    return float(np.sqrt((LIGHTNESS_WEIGHT * d[0]) ** 2 + d[1] ** 2 + d[2] ** 2))


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected regions of a boolean mask, largest first, each as a boolean mask."""
    seen = np.zeros_like(mask)
    h, w = mask.shape
    regions = []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        region, queue = np.zeros_like(mask), deque([start])
        while queue:
            y, x = queue.popleft()
            region[y, x] = True
            for ny in range(max(y - 1, 0), min(y + 2, h)):
                for nx in range(max(x - 1, 0), min(x + 2, w)):
                    if mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        regions.append(region)
    return sorted(regions, key=lambda r: -int(r.sum()))


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def _cell(value: float) -> int:
    return int(value > CELL_EDGES[0]) + int(value > CELL_EDGES[1])


GRID = {(_cell(x), _cell(y)): name for name, (x, y) in scenes.POSITIONS.items()}


def _measure(rgb: np.ndarray, background: np.ndarray, region: np.ndarray, others: np.ndarray) -> dict | None:
    """Attributes of one object, or None if it is too faint to be one."""
    distance = np.linalg.norm(rgb - background, axis=-1)
    core = region & (distance >= 0.8 * np.percentile(distance[region], 90))  # the object's own colour, not its edge
    colour = np.median(rgb[core], axis=0)
    axis = colour - background
    contrast = float(np.linalg.norm(axis))
    if contrast < MIN_CONTRAST:
        return None
    # Coverage: how far along background -> object colour each pixel is; the edge ring catches anti-aliasing.
    near = _dilate(region, 2) & ~others
    alpha = np.where(near, np.clip((rgb - background) @ axis / contrast**2, 0, 1), 0)
    area = float(alpha.sum())
    ys, xs = np.nonzero(region)
    # Sub-pixel box: each column (row) counts as much as its most covered pixel.
    columns = alpha[:, xs.min() - (xs.min() > 0) : xs.max() + 2].max(axis=0)
    rows = alpha[ys.min() - (ys.min() > 0) : ys.max() + 2].max(axis=1)
    width, height = float(columns.sum()), float(rows.sum())
    x0 = xs.min() - (xs.min() > 0) + (1 - columns[0])  # left edge: the first column covers only its right part
    y0 = ys.min() - (ys.min() > 0) + (1 - rows[0])
    cx, cy = x0 + width / 2, y0 + height / 2
    above = np.clip(cy - np.arange(scenes.SIZE), 0, 1)  # the part of each row above the box centre
    top = float((alpha.sum(axis=1) * above).sum()) / area
    fill = area / (width * height)
    shape = "triangle" if top < 0.38 or fill < 0.6 else "square" if fill > 0.9 else "circle"
    lab = _lab(colour)
    chroma = float(np.hypot(lab[1], lab[2]))
    name = min(PALETTE, key=lambda c: _colour_distance(lab, PALETTE[c])) if chroma >= MIN_CHROMA else None
    return {
        "colour": name,
        "shape": shape,
        "position": GRID[_cell(cx), _cell(cy)],
        "size": "large" if max(width, height) > LARGE else "small",
        "cx": cx,
        "cy": cy,
        "extent": max(width, height),
        "fill": fill,
        "top": top,
        "rgb": tuple(int(v) for v in colour.round()),
    }


def detect(image: Image.Image | np.ndarray | torch.Tensor) -> tuple[str | None, list[dict]]:
    """(background name or None, objects largest first); ([], None) if the picture has no uniform background."""
    # A 3x3 median removes noise and JPEG speckle but keeps straight edges where they are.
    rgb = np.asarray(Image.fromarray(to_array(image)).filter(ImageFilter.MedianFilter(3)), np.float64)
    border = np.concatenate([rgb[:BORDER].reshape(-1, 3), rgb[-BORDER:].reshape(-1, 3)]
                            + [rgb[:, :BORDER].reshape(-1, 3), rgb[:, -BORDER:].reshape(-1, 3)])  # fmt: skip
    background = np.median(border, axis=0)
    if np.mean(np.linalg.norm(border - background, axis=1) < OBJECT_DISTANCE / 2) < BORDER_AGREEMENT:
        return None, []  # noise, or no background to speak of
    lab = _lab(background)
    named = min(BACKGROUND_LAB, key=lambda b: _colour_distance(lab, BACKGROUND_LAB[b]))
    named = named if _colour_distance(lab, BACKGROUND_LAB[named]) < 6 else None
    mask = np.linalg.norm(rgb - background, axis=-1) > OBJECT_DISTANCE
    regions = [r for r in _components(mask) if r.sum() >= MIN_AREA]
    union = np.any(regions, axis=0) if regions else mask
    objects = [_measure(rgb, background, region, union & ~region) for region in regions]
    return named, [o for o in objects if o is not None]


def _target(target: scenes.Scene | str) -> scenes.Scene:
    return scenes.parse_caption(target) if isinstance(target, str) else target


def judge(image: Image.Image | np.ndarray | torch.Tensor, target: scenes.Scene | str | None = None) -> dict:
    """{colour, shape, position, size, background, objects, things}: the largest object's attributes (None
    when there is no clear object), the background's name, the number of objects and each object's details.

    With a target scene or caption, also "ok": {attribute: bool, "background": bool, "all": bool}. A target
    with two objects is matched to the two largest objects by position; an attribute is right if it is right
    for both."""
    background, things = detect(image)
    first = things[0] if things else dict.fromkeys(ATTRIBUTES)
    verdict = {a: first[a] for a in ATTRIBUTES} | {"background": background, "objects": len(things), "things": things}
    if target is None:
        return verdict
    wanted = _target(target).things
    candidates = things + [dict.fromkeys(ATTRIBUTES, None) | {"cx": np.inf, "cy": np.inf}] * len(wanted)
    best = min(
        itertools.permutations(candidates, len(wanted)),
        key=lambda found: sum(np.hypot(f["cx"] - t.cx, f["cy"] - t.cy) for f, t in zip(found, wanted, strict=True)),
    )
    ok = {a: all(f[a] == getattr(t, a) for f, t in zip(best, wanted, strict=True)) for a in ATTRIBUTES}
    ok["all"] = all(ok.values())
    ok["background"] = background == _target(target).background
    return verdict | {"ok": ok}


def score(images: Sequence | torch.Tensor, targets: Sequence[scenes.Scene | str]) -> dict[str, float]:
    """Accuracy of each attribute, of all four at once ("all"), and of the background."""
    oks = [judge(im, t)["ok"] for im, t in zip(images, targets, strict=True)]
    return {key: float(np.mean([ok[key] for ok in oks])) for key in (*ATTRIBUTES, "all", "background")}


def degrade(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """What a generated picture may suffer: slight blur, a colour cast of up to 10%, Gaussian noise of sigma
    0.05-0.1 (in [-1, 1] units) and JPEG artefacts."""
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))
    array = np.asarray(image, np.float64) * rng.uniform(0.9, 1.1, 3) + rng.uniform(-10, 10, 3)
    array = array + rng.normal(0, rng.uniform(0.05, 0.1) * 127.5, array.shape)
    buffer = io.BytesIO()
    Image.fromarray(array.clip(0, 255).round().astype(np.uint8)).save(buffer, "JPEG", quality=int(rng.integers(40, 90)))
    return Image.open(buffer).convert("RGB")


def main() -> None:
    pairs = scenes.make_dataset(900, seed=123) + scenes.make_dataset(300, seed=321, held_out=True)
    pairs += [p for p in scenes.make_dataset(1000, seed=7, two_objects=True) if len(p[0].things) == 2][:200]
    targets = [s for s, _ in pairs]
    clean = [s.render() for s in targets]
    rng = np.random.default_rng(0)
    degraded = [degrade(im, rng) for im in clean]
    single = slice(0, 1200)
    for label, images, chosen in [("clean", clean, single), ("degraded", degraded, single),
                                  ("clean two-object", clean, slice(1200, None)),
                                  ("degraded two-object", degraded, slice(1200, None))]:  # fmt: skip
        result = score(images[chosen], targets[chosen])
        print(f"{label:20} n={len(images[chosen]):4}  " + "  ".join(f"{k} {v:.3f}" for k, v in result.items()))
    blank = [Image.new("RGB", (64, 64), rgb) for rgb in scenes.BACKGROUNDS.values()]
    noise = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(50)]
    gauss = [torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(50)]
    rejected = [judge(im)["colour"] is None for im in blank + noise + gauss]
    print(f"blank and noise images with no object found: {sum(rejected)}/{len(rejected)}")


if __name__ == "__main__":
    main()
