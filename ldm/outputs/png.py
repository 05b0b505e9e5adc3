"""Images out: tensors to PIL, and PNG files that carry their `parameters` text and never overwrite a file."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ldm.errors import LdmError
from ldm.outputs.files import new_file, write_whole


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> RGB images, rounded as diffusers rounds them."""
    array = (images.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in (array * 255).round().astype(np.uint8)]


def png_bytes(image: Image.Image, parameters: str | None = None) -> bytes:
    """The PNG of `image` with its `parameters` text chunk: what save_png writes and what a server sends."""
    info = PngInfo()
    if parameters is not None:
        info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def save_png(image: Image.Image, outdir: Path, seed: int, parameters: str) -> Path:
    """Write `NNNNN-<seed>.png` in `outdir` under the next free number; never replaces an existing file."""
    data = png_bytes(image, parameters)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        fd, tmp = new_file(outdir, ".ldm-", ".png")
    except OSError as e:
        raise LdmError(f"cannot write an image into {outdir} ({e.strerror}); choose a writable --outdir") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        number = next_number(outdir)
        while True:
            final = outdir / f"{number:05d}-{seed}.png"
            try:
                os.link(tmp, final)  # atomic, and fails instead of replacing a file that appeared meanwhile
                return final
            except FileExistsError:
                number += 1
    except OSError as e:
        raise LdmError(f"cannot write an image into {outdir} ({e.strerror}); choose a writable --outdir") from None
    finally:
        tmp.unlink(missing_ok=True)


def next_number(outdir: Path) -> int:
    """One past the highest `NNNNN-` number in `outdir`, as AUTOMATIC1111 numbers its outputs. A preview
    (`NNNNN-<seed>.preview.png`, named after the image it becomes) holds no number of its own."""
    numbers = [int(m.group(1)) for p in outdir.iterdir()
               if (m := re.match(r"(\d{5,})-", p.name)) and not p.name.endswith(".preview.png")]  # fmt: skip
    return max(numbers, default=-1) + 1


def save_png_as(image: Image.Image, path: Path, parameters: str) -> Path:
    """Write the PNG at exactly `path` (a name chosen by its caller, such as a job's); an existing file there is
    an error, never replaced, and a half-written PNG never appears under that name."""
    data = png_bytes(image, parameters)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_whole(path, lambda f: f.write(data))
        return path
    except FileExistsError:
        raise LdmError(f"{path} already exists; move it away or choose another --outdir") from None
    except OSError as e:
        raise LdmError(f"cannot write an image into {path.parent} ({e.strerror}); choose a writable --outdir") from None
