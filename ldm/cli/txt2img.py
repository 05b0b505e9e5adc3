"""ldm-txt2img: make images from a prompt and write them as PNGs carrying their generation settings."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from ldm.cli.from_file import add_from_file_options, run_from_file
from ldm.cli.parser import OneLineParser
from ldm.cli.preview_options import add_preview_options, check_preview_options, preview_file
from ldm.cli.prompt_options import add_prompt_options, apply_prompt_options
from ldm.cli.short_lived import run_short_lived
from ldm.errors import LdmError

DTYPES = ("float32", "float16", "bfloat16")


def build_parser() -> argparse.ArgumentParser:
    from ldm.generate.image_settings import UPSCALERS

    p = common_parser(
        "ldm-txt2img", "Generate images from a text prompt with a Stable Diffusion v1 model.", from_file=True
    )
    hires = p.add_argument_group("hires fix (AUTOMATIC1111's second pass at a larger size)")
    hires.add_argument("--hires-scale", type=float, help="upscale the first image by this much and refine it")
    hires.add_argument(
        "--hires-resize", type=_size, help="WxH for the second pass instead of a scale (W or H may be 0)"
    )
    hires.add_argument("--hires-steps", type=int, help="steps of the second pass (default: --steps)")
    hires.add_argument("--hires-strength", type=float, help="denoising strength of the second pass (default 0.7)")
    hires.add_argument("--hires-upscaler", choices=UPSCALERS, help="latent modes or pixel resizers (default Latent)")
    return p


def _size(text: str) -> tuple[int, int]:
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not WxH, e.g. 1024x768")
    return int(w), int(h)


def common_parser(prog: str, description: str, *, from_file: bool = False) -> argparse.ArgumentParser:
    """The options every ldm generation command takes; `from_file`: also --from-file, instead of --prompt."""
    from ldm.cpu.int8 import QUANTIZE
    from ldm.models.attention import BACKENDS
    from ldm.runtime.offload import MODES
    from ldm.sampling.samplers import SPECS

    p = OneLineParser(prog=prog, description=description)
    source = p.add_mutually_exclusive_group(required=True) if from_file else p
    source.add_argument("--prompt", required=not from_file, help="what the image should show")
    if from_file:
        add_from_file_options(p, source)
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
    p.add_argument("--outdir", type=Path, default=Path("outputs") / prog.removeprefix("ldm-"), help="where PNGs go")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--dtype", choices=DTYPES, help="weights dtype (default: float16 on cuda, float32 on cpu)")
    p.add_argument("--attention", choices=BACKENDS, help="attention backend")
    p.add_argument("--offload", choices=MODES, help="keep weights in CPU memory between uses")
    p.add_argument("--compile", action="store_true", help="torch.compile the U-Net (slow first image, then faster)")
    p.add_argument("--quantize", choices=QUANTIZE, help="CPU: the U-Net's weights in 8 bits (faster, less memory)")
    p.add_argument("--no-pack", action="store_true",
                   help="CPU: weights stay in the file's pages, shared by processes (less memory, slower)")  # fmt: skip
    p.add_argument("--vae-tiling", action="store_true", help="decode in tiles: large images in bounded memory")
    p.add_argument("--vae-slicing", action="store_true", help="decode a batch one image at a time: less memory")
    p.add_argument("--clip-skip", type=int, help="1 = last CLIP layer; 2 = the one before (AUTOMATIC1111)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_prompt_options(p)
    add_preview_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return execute(build_parser(), argv)


def execute(parser: argparse.ArgumentParser, argv: list[str] | None, inputs: Inputs | None = None) -> int:
    """Parse, run, and turn every error into one line (exit 2) and Ctrl-C into exit 130."""
    args = parser.parse_args(argv)
    try:
        return run(args, inputs)
    except LdmError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # From the start of the line, clearing it on a terminal: an interrupt during the progress bar's first draw
        # leaves the bar unable to clear its own line (tqdm has not yet noted that it drew).
        clear = "\x1b[K" if sys.stderr.isatty() else ""
        print(f"\r{parser.prog}: interrupted{clear}", file=sys.stderr)
        return 130


# Reads the command's pictures (init image, mask) and the settings they bring, before the model loads.
Inputs = Callable[[argparse.Namespace], tuple[Any, Any, dict[str, Any]]]


def run(args: argparse.Namespace, inputs: Inputs | None = None) -> int:
    from ldm.outputs.png import save_png

    if args.n_iter < 1 or args.batch_size < 1:
        raise LdmError("--batch-size and --n-iter must be at least 1")
    _check_outdir(args.outdir)
    image, mask, image_settings = inputs(args) if inputs is not None else (None, None, _hires_settings(args))
    check_preview_options(args)
    if getattr(args, "skip_existing", False) and args.from_file is None:
        raise LdmError("--skip-existing finishes a --from-file run; give the prompt file")
    if getattr(args, "from_file", None) is not None:
        return run_from_file(args, load_pipeline, request_settings(args, image_settings))
    pipe = load_pipeline(args, args.device)
    request = pipe.request(**request_settings(args, image_settings))
    if image is not None and args.width is None and args.height is None:
        from ldm.generate.image_input import default_size

        request = request.replace(**dict(zip(("width", "height"), default_size(image), strict=True)))
    request = request.with_seed()
    for _ in range(args.n_iter):
        with preview_file(args, request.seed) as (preview, previews):
            result = pipe.generate(request, image=image, mask=mask, progress=not args.quiet, preview=preview)
            for picture, seed, infotext in zip(result.images, result.seeds, result.infotexts, strict=True):
                path = save_png(picture, args.outdir, seed, infotext)
                previews.saved = previews.saved or path  # the preview showed image 0
                print(path)
        request = request.replace(seed=request.seed + args.batch_size)
    return 0


def load_pipeline(args: argparse.Namespace, device: str | None) -> Any:
    """The Pipeline the options describe, on `device`, with its model hash, LoRAs and embeddings."""
    import torch

    from ldm.generate.pipeline import Pipeline

    dtype = getattr(torch, args.dtype) if args.dtype else None
    pipe = Pipeline.load(args.checkpoint, device=device, dtype=dtype, attention=args.attention, config=args.config,
                         offload=args.offload, compile=args.compile, taesd=args.taesd,
                         pack=not args.no_pack, quantize=args.quantize)  # fmt: skip
    pipe.hash_model()
    apply_prompt_options(pipe, args)
    return pipe


def request_settings(args: argparse.Namespace, image_settings: dict[str, Any]) -> dict[str, Any]:
    """The request the options give, as Pipeline.request's keywords (None: the model's default)."""
    return {
        "prompt": args.prompt,
        "negative_prompt": args.negative_prompt,
        "steps": args.steps,
        "guidance": args.guidance,
        "sampler": args.sampler,
        "karras": args.karras or None,
        "width": args.width,
        "height": args.height,
        "clip_skip": args.clip_skip,
        "eta": args.eta,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "vae_tiling": args.vae_tiling,
        "vae_slicing": args.vae_slicing,
        "emphasis": args.emphasis,
        "vae_decoder": args.vae_decoder,
        **image_settings,
    }


def _hires_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"hires_scale": args.hires_scale, "hires_resize": args.hires_resize, "hires_steps": args.hires_steps,
            "strength": args.hires_strength, "hires_upscaler": args.hires_upscaler}  # fmt: skip


def _check_outdir(outdir: Path) -> None:
    """Fail before minutes of sampling, not after: the folder must exist or be creatable, and be writable."""
    probe = outdir
    while not probe.exists():
        probe = probe.parent
    import os

    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise LdmError(f"cannot write images into {outdir}; choose a writable --outdir")


def console() -> NoReturn:
    """The console script: main() in a short-lived process (ldm/cli/short_lived.py)."""
    run_short_lived(main)


if __name__ == "__main__":
    console()
