"""Prompt adherence of the built-in model, through the public Pipeline, scored by tools/judge.py.

    python tools/eval.py                      # table to stdout, grid to eval-grid.png
    python tools/eval.py --quick              # fewer images, one sampler
    python tools/eval.py --quantize int8      # the same table with 8-bit U-Net weights

Reports held-in and held-out (colour, shape) captions, guidance 1.0 vs 7.5, samplers at 10/20/50 steps, and
inpainting: each scene's object repainted as another (colour, shape) through a mask around it.
Each image uses the canonical caption of a scene and its own seed; chance is colour 1/6, shape 1/3,
position 1/9, size 1/2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import judge  # noqa: E402
import scenes  # noqa: E402

from ldm import Pipeline  # noqa: E402


def evaluate(pipe: Pipeline, targets: list[scenes.Scene], *, batch: int = 16, **settings) -> tuple[dict, list]:
    images = []
    for i in range(0, len(targets), batch):
        prompts = [t.caption(0) for t in targets[i : i + batch]]
        images += pipe(prompts, seed=1000 + i, progress=False, width=scenes.SIZE, height=scenes.SIZE, **settings)
    return judge.score(images, targets), images


def replacement(target: scenes.Scene, index: int) -> scenes.Scene:
    """The same scene with its object in another colour and shape (same size, place and background)."""
    thing = target.things[0]
    pairs = [(c, s) for c in scenes.COLOURS for s in scenes.SHAPES if c != thing.colour and s != thing.shape]
    pairs = [p for p in pairs if p not in scenes.HELD_OUT]
    colour, shape = pairs[index % len(pairs)]
    return scenes.Scene((scenes.Thing.nominal(colour, shape, thing.size, thing.position),), target.background)


def object_mask(target: scenes.Scene, margin: float = 6.0) -> Image.Image:
    """White over the object's box plus a margin: where the new object may go."""
    thing = target.things[0]
    half = thing.extent / 2 + margin
    box = [round(v) for v in (thing.cx - half, thing.cy - half, thing.cx + half, thing.cy + half)]
    mask = Image.new("L", (scenes.SIZE, scenes.SIZE), 0)
    mask.paste(255, (max(box[0], 0), max(box[1], 0), min(box[2], scenes.SIZE), min(box[3], scenes.SIZE)))
    return mask


def evaluate_inpainting(pipe: Pipeline, targets: list[scenes.Scene], **settings) -> tuple[dict, list]:
    """Judge the new object inside the mask, and count the pixels outside it that stayed exactly as they were."""
    _, originals = evaluate(pipe, targets, **settings)
    wanted = [replacement(t, i) for i, t in enumerate(targets)]
    images, kept = [], []
    for i, (original, target, new) in enumerate(zip(originals, targets, wanted, strict=True)):
        mask = object_mask(target)
        image = pipe.inpaint(original, mask, new.caption(0), seed=2000 + i, mask_blur=0, progress=False, **settings)[0]
        outside = np.asarray(mask) == 0
        kept.append(np.array_equal(np.asarray(image)[outside], np.asarray(original)[outside]))
        images.append(image)
    return judge.score(images, wanted) | {"kept": float(np.mean(kept))}, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="default: the built-in model")
    parser.add_argument("--n", type=int, default=64, help="images per row of the table")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--grid", type=Path, default=Path("eval-grid.png"))
    parser.add_argument("--quantize", choices=("int8",), help="8-bit U-Net weights (CPU), as ldm-txt2img's")
    args = parser.parse_args()
    pipe = Pipeline.load(args.checkpoint, quantize=args.quantize)
    held_in = [s for s, _ in scenes.sample(args.n, seed=2024)]
    held_out = [s for s, _ in scenes.sample(args.n, seed=2024, held_out=True)]
    rows = [("held-in", held_in, "dpmpp_2m", 20, 7.5), ("held-out", held_out, "dpmpp_2m", 20, 7.5),
            ("held-in", held_in, "dpmpp_2m", 20, 1.0)]  # fmt: skip
    if not args.quick:
        samplers = ("euler_a", "ddim", "plms")
        rows += [("held-in", held_in, sampler, steps, 7.5) for sampler in samplers for steps in (10, 20, 50)]
        rows += [("held-in", held_in, "dpmpp_2m", steps, 7.5) for steps in (10, 50)]
    started = time.time()
    result, _ = evaluate_inpainting(pipe, held_in, sampler="dpmpp_2m", steps=20, guidance=7.5)
    seconds = (time.time() - started) / len(held_in)
    cells = " | ".join(f"{result[a]:.2f}" for a in (*judge.ATTRIBUTES, "all"))
    header = "| inpainting | sampler | steps | guidance | colour | shape | position | size | all four | outside kept |"
    print(f"{header} s/image |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| held-in, new colour and shape | dpmpp_2m | 20 | 7.5 | {cells} | {result['kept']:.2f} | {seconds:.2f} |\n")
    print("| captions | sampler | steps | guidance | colour | shape | position | size | all four | s/image |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    grid = []
    for label, targets, sampler, steps, guidance in rows:
        started = time.time()
        result, images = evaluate(pipe, targets, sampler=sampler, steps=steps, guidance=guidance)
        seconds = (time.time() - started) / len(targets)
        cells = " | ".join(f"{result[a]:.2f}" for a in (*judge.ATTRIBUTES, "all"))
        print(f"| {label} | {sampler} | {steps} | {guidance} | {cells} | {seconds:.2f} |", flush=True)
        if len(grid) < 4 * 16:
            grid += images[:16]
    scenes.grid(grid, 16).resize((16 * 128, len(grid) // 16 * 128)).save(args.grid)
    print(f"grid: {args.grid} (rows: {', '.join(f'{r[0]} {r[2]} {r[3]} g{r[4]}' for r in rows[:4])})")


if __name__ == "__main__":
    main()
