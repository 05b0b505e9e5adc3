"""ldm-img2img: new images from an init image (img2img), or repaint part of it through a mask (inpainting,
outpainting), written as PNGs carrying their generation settings. Every ldm-txt2img option works here too."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, NoReturn

from ldm.cli.short_lived import run_short_lived
from ldm.cli.txt2img import common_parser, execute
from ldm.errors import LdmError

RESIZE_MODES = ("just-resize", "crop", "fill")
FILLS = ("original", "fill", "latent-noise", "latent-nothing")


def build_parser() -> argparse.ArgumentParser:
    p = common_parser("ldm-img2img", "Make images from an init image and a prompt, or repaint it through a mask.")
    g = p.add_argument_group("init image")
    g.add_argument("--init-image", type=Path, required=True, help="the picture to start from (PNG, JPEG, WebP)")
    g.add_argument("--strength", type=float, help="how much to change: 0 keeps it, 1 repaints all (default "
                   "0.75; 1.0 with a mask)")  # fmt: skip
    fit_help = "fit to --width/--height: stretch, crop the middle, or fill the sides (A1111's 0, 1, 2)"
    g.add_argument("--resize-mode", choices=RESIZE_MODES, default="just-resize", help=fit_help)
    m = p.add_argument_group("inpainting")
    m.add_argument("--mask", type=Path, help="white = repaint, black = keep; the image's size")
    m.add_argument("--mask-invert", action="store_true", help="black repaints, white keeps")
    m.add_argument("--mask-blur", type=int, help="blur the mask's edge by this many pixels (A1111's default: 4)")
    box_help = "sample just the mask's box at full --width/--height and paste it back (A1111's Only masked)"
    m.add_argument("--inpaint-only-masked", action="store_true", help=box_help)
    m.add_argument("--inpaint-padding", type=int, default=32, help="pixels around the box, with --inpaint-only-masked")
    fill_help = "what a non-inpainting model starts from under the mask (A1111's Masked content)"
    m.add_argument("--inpainting-fill", choices=FILLS, default="original", help=fill_help)
    outpaint_help = "extend the picture by these many pixels left, right, top, bottom (multiples of 8)"
    m.add_argument("--outpaint", metavar="L,R,T,B", help=outpaint_help)
    return p


def read_inputs(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    from ldm.generate.image_input import outpaint_canvas, read_image

    image = read_image(args.init_image, "init image")
    mask = read_image(args.mask, "mask") if args.mask else None
    if args.outpaint:
        if mask is not None:
            raise LdmError("--outpaint makes its own mask; leave out --mask")
        try:
            sides = [int(v) for v in args.outpaint.split(",")]
        except ValueError:
            sides = []
        if len(sides) != 4:
            raise LdmError(f"--outpaint wants four numbers L,R,T,B (pixels), got {args.outpaint!r}")
        image, mask = outpaint_canvas(image, *sides)
    settings = {"strength": args.strength, "resize_mode": args.resize_mode, "inpaint_padding": args.inpaint_padding,
                "inpainting_fill": args.inpainting_fill}  # fmt: skip
    if mask is not None:
        settings |= {"mask_blur": 4 if args.mask_blur is None else args.mask_blur, "mask_invert": args.mask_invert,
                     "inpaint_full_res": args.inpaint_only_masked}  # fmt: skip
    return image, mask, settings


def main(argv: list[str] | None = None) -> int:
    return execute(build_parser(), argv, read_inputs)


def console() -> NoReturn:
    """The console script: main() in a short-lived process (ldm/cli/short_lived.py)."""
    run_short_lived(main)


if __name__ == "__main__":
    console()
