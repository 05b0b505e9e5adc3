"""Pictures in: reading an init image or a mask, flattening it to RGB, fitting it to a size (A1111's resize modes),
turning it into the tensors the VAE and the mask rules want, blurring a mask, and the final overlay.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ldm.errors import ConfigError, LdmError


def read_image(path: str | Path, what: str = "image") -> Image.Image:
    """An image file, fully read (so a bad file fails here, in one line)."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except FileNotFoundError:
        raise LdmError(f"no {what} file at {path}; check the path") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise LdmError(f"cannot read the {what} {path} ({e}); give a PNG, JPEG or WebP file") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB; transparency flattened onto white, as A1111 flattens an init image."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def fit(image: Image.Image, width: int, height: int, mode: str = "just-resize") -> Image.Image:
    """A1111's resize_image: "just-resize" stretches; "crop" scales to cover and crops the middle; "fill" scales to
    fit and fills the sides by stretching the picture's edge rows or columns."""
    if image.size == (width, height):
        return image
    if mode == "just-resize":
        return image.resize((width, height), Image.LANCZOS)
    ratio, src_ratio = width / height, image.width / image.height
    cover = ratio > src_ratio if mode == "crop" else ratio < src_ratio
    w = width if cover else image.width * height // image.height
    h = image.height * width // image.width if cover else height
    resized = image.resize((w, h), Image.LANCZOS)
    out = Image.new("RGB", (width, height))
    out.paste(resized, box=(width // 2 - w // 2, height // 2 - h // 2))
    if mode == "fill":
        if ratio < src_ratio:  # bands above and below
            band = height // 2 - h // 2
            if band > 0:
                out.paste(resized.resize((width, band), box=(0, 0, width, 0)), box=(0, 0))
                out.paste(resized.resize((width, band), box=(0, h, width, h)), box=(0, band + h))
        elif ratio > src_ratio:  # bands left and right
            band = width // 2 - w // 2
            if band > 0:
                out.paste(resized.resize((band, height), box=(0, 0, 0, height)), box=(0, 0))
                out.paste(resized.resize((band, height), box=(w, 0, w, height)), box=(band + w, 0))
    return out


def default_size(image: Image.Image) -> tuple[int, int]:
    """The output size an init image gives when none is asked for: its own, floored to multiples of 8 (diffusers)."""
    w, h = image.width // 8 * 8, image.height // 8 * 8
    if not w or not h:
        raise ConfigError(f"the image is {image.width}x{image.height}; it must be at least 8x8 pixels")
    return w, h


def image_tensor(image: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) in [-1, 1], as diffusers' image processor normalizes."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None] * 2 - 1


def mask_array(mask: Image.Image, width: int, height: int, invert: bool = False) -> np.ndarray:
    """(H, W) float mask in [0, 1], 1 = repaint: greyscale, then Lanczos to the size (diffusers' order); an alpha
    channel with transparency is the mask where the picture is transparent, as A1111 reads an RGBA mask."""
    if mask.mode in ("RGBA", "LA") and mask.getchannel("A").getextrema()[0] < 255:
        mask = mask.getchannel("A").point(lambda a: 255 if a <= 128 else 0)
    grey = mask.convert("L")
    if grey.size != (width, height):
        grey = grey.resize((width, height), Image.LANCZOS)
    array = np.asarray(grey, dtype=np.float32) / 255.0
    return 1 - array if invert else array


def blur(mask: np.ndarray, radius: int) -> np.ndarray:
    """A1111's mask blur: a Gaussian of sigma `radius` with kernel 2 * int(2.5 * radius + 0.5) + 1, along x then y
    (OpenCV's GaussianBlur with reflected borders)."""
    if radius <= 0:
        return mask
    size = 2 * int(2.5 * radius + 0.5) + 1
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-(x**2) / (2 * radius**2))
    kernel = (kernel / kernel.sum()).float()
    t = torch.from_numpy(np.ascontiguousarray(mask))[None, None]
    pad = size // 2
    mode = "reflect" if pad < min(t.shape[-2:]) else "replicate"
    t = F.conv2d(F.pad(t, (pad, pad, 0, 0), mode=mode), kernel.view(1, 1, 1, -1))
    t = F.conv2d(F.pad(t, (0, 0, pad, pad), mode=mode), kernel.view(1, 1, -1, 1))
    return t[0, 0].numpy()


def binarize(mask: np.ndarray) -> torch.Tensor:
    """(1, 1, H, W): 1 where the mask is at least one half (diffusers' binarize)."""
    return torch.from_numpy((mask >= 0.5).astype(np.float32))[None, None]


def overlay(generated: Image.Image, original: Image.Image, mask: np.ndarray) -> Image.Image:
    """The generated picture only where the mask repaints: original pixels elsewhere, exactly (A1111's overlay,
    with its doubled mask so that a blurred edge still keeps the original wherever the mask is below one half)."""
    alpha = np.clip(mask * 2, 0, 1)[..., None]
    out = np.asarray(original, dtype=np.float32) * (1 - alpha) + np.asarray(generated, dtype=np.float32) * alpha
    return Image.fromarray(np.round(out).clip(0, 255).astype(np.uint8))


def crop_region(mask: np.ndarray, padding: int, width: int, height: int) -> tuple[int, int, int, int] | None:
    """A1111's "only masked" box: the mask's bounding box plus `padding`, grown to the aspect of width x height
    and kept inside the picture; None when nothing is masked. (x1, y1, x2, y2), end exclusive."""
    ys, xs = np.nonzero(mask > 0)
    if not len(xs):
        return None
    ih, iw = mask.shape
    x1, y1 = max(int(xs.min()) - padding, 0), max(int(ys.min()) - padding, 0)
    x2, y2 = min(int(xs.max()) + 1 + padding, iw), min(int(ys.max()) + 1 + padding, ih)
    if (x2 - x1) / (y2 - y1) > width / height:  # too wide for the output: grow the height
        y1, y2 = _grow(y1, y2, (x2 - x1) * height / width, ih)
    else:
        x1, x2 = _grow(x1, x2, (y2 - y1) * width / height, iw)
    return int(x1), int(y1), int(x2), int(y2)


def _grow(lo: float, hi: float, desired: float, limit: int) -> tuple[float, float]:
    """[lo, hi) grown to `desired` about its middle, shifted back inside [0, limit] (A1111's expand_crop_region)."""
    grow = desired - (hi - lo)
    lo, hi = lo - grow // 2, hi + grow - grow // 2
    if hi >= limit:
        lo, hi = lo - (hi - limit), limit
    if lo < 0:
        hi, lo = hi - lo, 0
    return lo, min(hi, limit)


def outpaint_canvas(image: Image.Image, left: int, right: int, top: int, bottom: int, overlap: int = 8):
    """The image on a larger canvas (new borders filled from its edge pixels) and the mask of the new borders,
    reaching `overlap` pixels into the picture so the seam is repainted too."""
    for side in (left, right, top, bottom):
        if side < 0 or side % 8:
            raise ConfigError(f"outpaint sides must be whole multiples of 8 pixels, got {left},{right},{top},{bottom}")
    w, h = image.width + left + right, image.height + top + bottom
    array = np.asarray(image.convert("RGB"))
    padded = np.pad(array, ((top, bottom), (left, right), (0, 0)), mode="edge")
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[: top + overlap * (top > 0), :] = 255
    mask[h - bottom - overlap * (bottom > 0) :, :] = 255
    mask[:, : left + overlap * (left > 0)] = 255
    mask[:, w - right - overlap * (right > 0) :] = 255
    return Image.fromarray(padded), Image.fromarray(mask, mode="L")


def latent_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """The pixel mask at latent size, nearest (diffusers' F.interpolate default)."""
    h, w = mask.shape[-2:]
    return F.interpolate(mask, size=(math.ceil(h / factor), math.ceil(w / factor)))
