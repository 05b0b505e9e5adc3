"""The preview and TAESD options every generating CLI shares (ldm-txt2img, ldm-img2img), and the preview file.

While a batch samples, `<outdir>/<NNNNN>-<seed>.preview.png` shows image 0's current x0 estimate, named after
the image it becomes; each write goes to a temporary file renamed over it, so a viewer never reads half a PNG.
When the batch is saved the preview is removed, or with --keep-previews renamed beside the image it previewed.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ldm.errors import LdmError
from ldm.outputs.files import new_file

if TYPE_CHECKING:
    from PIL import Image

METHODS = ("none", "approx", "taesd", "full")  # = ldm/generate/preview.py's; this module loads no torch
DECODERS = ("full", "taesd")
SUFFIX = ".preview.png"


def add_preview_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preview",
        choices=METHODS,
        default="none",
        help="write <image>.preview.png while sampling: approx (free), taesd (close), full (slow)",
    )
    parser.add_argument("--preview-every", type=int, default=5, help="steps between previews (default: 5)")
    parser.add_argument("--keep-previews", action="store_true", help="keep each batch's last preview beside it")
    parser.add_argument(
        "--vae-decoder",
        choices=DECODERS,
        default="full",
        help="taesd: decode the final images with TAESD (fast, approximate; recorded as VAE: taesd)",
    )
    parser.add_argument("--taesd", type=Path, help="a TAESD for previews and --vae-decoder taesd: madebyollin's "
                        "taesd_decoder.pth/.safetensors or its diffusers folder (built-in model: its own)")  # fmt: skip


def check_preview_options(args: argparse.Namespace) -> None:
    """Before the model loads: what argparse's types cannot say."""
    if args.preview_every < 1:
        raise LdmError(f"--preview-every must be at least 1, got {args.preview_every}")


class PreviewFile:
    """The preview of one batch: `show` is what Pipeline.generate(preview=Preview(show, ...)) calls."""

    def __init__(self, outdir: Path, seed: int):
        from ldm.outputs.png import next_number  # torch and PIL load once a command runs, not for --help

        self.outdir = outdir
        self.path = outdir / f"{next_number(outdir) if outdir.is_dir() else 0:05d}-{seed}{SUFFIX}"
        self.saved: Path | None = None  # where image 0 was written, once it is

    def show(self, step: int, total: int, image: Image.Image) -> None:
        try:
            self.outdir.mkdir(parents=True, exist_ok=True)
            fd, tmp = new_file(self.outdir, ".ldm-preview-", ".png")
        except OSError as e:
            raise LdmError(f"cannot write a preview into {self.outdir} ({e.strerror})") from None
        try:
            with os.fdopen(fd, "wb") as f:
                image.save(f, format="PNG")
            os.replace(tmp, self.path)  # atomic: the old preview or the new one, never half of one
        except OSError as e:
            raise LdmError(f"cannot write a preview into {self.outdir} ({e.strerror})") from None
        finally:
            tmp.unlink(missing_ok=True)

    def close(self, keep: bool) -> None:
        if not self.path.exists():
            return
        if keep and self.saved is not None:
            os.replace(self.path, self.saved.with_name(self.saved.stem + SUFFIX))  # the image's number won
        elif not keep:
            self.path.unlink()


@contextmanager
def preview_file(args: argparse.Namespace, seed: int) -> Iterator[tuple[object | None, PreviewFile]]:
    """(what to pass as Pipeline.generate's preview, the file) for one batch; the file is cleaned up on exit,
    also when sampling fails or is interrupted."""
    from ldm.generate.preview import Preview

    file = PreviewFile(args.outdir, seed)
    preview = None if args.preview == "none" else Preview(file.show, args.preview, args.preview_every)
    try:
        yield preview, file
    finally:
        file.close(args.keep_previews)
