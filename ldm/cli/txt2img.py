"""ldm-txt2img: make images from a prompt and write them as PNGs carrying their generation settings."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ldm.cli.parser import OneLineParser
from ldm.cli.preview_options import add_preview_options, check_preview_options, preview_file
from ldm.errors import LdmError

DTYPES = ("float32", "float16", "bfloat16")


def build_parser() -> argparse.ArgumentParser:
    from ldm.models.attention import BACKENDS
    from ldm.runtime.offload import MODES
    from ldm.sampling.samplers import SPECS

    p = OneLineParser(
        prog="ldm-txt2img", description="Generate images from a text prompt with a Stable Diffusion v1 model."
    )
    p.add_argument("--prompt", required=True, help="what the image should show")
    p.add_argument("--negative-prompt", default="", help="what it should not show")
    p.add_argument("--steps", type=int, help="sampling steps (default: the model's, 50 for SD v1)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: 7.5)")
    p.add_argument("--sampler", choices=sorted(SPECS), help="sampling method (default: the model's)")
    p.add_argument("--karras", action="store_true", help="Karras noise schedule (samplers that have one)")
    p.add_argument("--eta", type=float, help="DDIM eta (0 = deterministic; only ddim takes one)")
    p.add_argument("--seed", type=int, help="random seed of the first image; image i uses seed + i (default: random)")
    p.add_argument("--width", type=int, help="image width in pixels, a multiple of 8 (default: the model's)")
    p.add_argument("--height", type=int, help="image height in pixels, a multiple of 8 (default: the model's)")
    p.add_argument("--batch-size", type=int, default=1, help="images made together in one batch")
    p.add_argument("--n-iter", type=int, default=1, help="how many batches to make, one after another")
    p.add_argument("--checkpoint", type=Path, help="a .safetensors/.ckpt file or diffusers folder (default: built-in)")
    p.add_argument("--config", type=Path, help="model config JSON for a non-standard checkpoint")
    p.add_argument("--outdir", type=Path, default=Path("outputs/txt2img"), help="where PNGs go")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--dtype", choices=DTYPES, help="weights dtype (default: float16 on cuda, float32 on cpu)")
    p.add_argument("--attention", choices=BACKENDS, help="attention backend")
    p.add_argument("--offload", choices=MODES, help="keep weights in CPU memory between uses")
    p.add_argument("--compile", action="store_true", help="torch.compile the U-Net (slow first image, then faster)")
    p.add_argument("--vae-tiling", action="store_true", help="decode in tiles: large images in bounded memory")
    p.add_argument("--vae-slicing", action="store_true", help="decode a batch one image at a time: less memory")
    p.add_argument("--clip-skip", type=int, help="1 = last CLIP layer; 2 = the one before (AUTOMATIC1111)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_preview_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except LdmError as e:
        print(f"ldm-txt2img: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    # Said after the except block, once the traceback is gone: a progress bar the interrupt caught half built is
    # freed, and clears its line, before this line is written.
    print("ldm-txt2img: interrupted", file=sys.stderr)
    return 130


def run(args: argparse.Namespace) -> int:
    import torch

    from ldm.generate.pipeline import Pipeline
    from ldm.outputs.png import save_png

    if args.n_iter < 1 or args.batch_size < 1:
        raise LdmError("--batch-size and --n-iter must be at least 1")
    _check_outdir(args.outdir)
    check_preview_options(args)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    pipe = Pipeline.load(args.checkpoint, device=args.device, dtype=dtype, attention=args.attention, config=args.config,
                         offload=args.offload, compile=args.compile, taesd=args.taesd)  # fmt: skip
    pipe.hash_model()
    request = pipe.request(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        steps=args.steps,
        guidance=args.guidance,
        sampler=args.sampler,
        karras=args.karras or None,
        width=args.width,
        height=args.height,
        clip_skip=args.clip_skip,
        eta=args.eta,
        seed=args.seed,
        batch_size=args.batch_size,
        vae_tiling=args.vae_tiling,
        vae_slicing=args.vae_slicing,
        vae_decoder=args.vae_decoder,
    ).with_seed()
    for _ in range(args.n_iter):
        with preview_file(args, request.seed) as (preview, previews):
            result = pipe.generate(request, progress=not args.quiet, preview=preview)
            for image, seed, infotext in zip(result.images, result.seeds, result.infotexts, strict=True):
                path = save_png(image, args.outdir, seed, infotext)
                previews.saved = previews.saved or path  # the preview showed image 0
                print(path)
        request = request.replace(seed=request.seed + args.batch_size)
    return 0


def _check_outdir(outdir: Path) -> None:
    """Fail before minutes of sampling, not after: the folder must exist or be creatable, and be writable."""
    probe = outdir
    while not probe.exists():
        probe = probe.parent
    import os

    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise LdmError(f"cannot write images into {outdir}; choose a writable --outdir")


if __name__ == "__main__":
    sys.exit(main())
