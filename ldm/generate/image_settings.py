"""The settings of image-conditioned generation (img2img, inpainting, the hires fix): their names, checks, and
how AUTOMATIC1111 writes them in a `parameters` text. GenerationRequest holds them; this keeps their rules apart.
"""

from __future__ import annotations

import math
from typing import Any

from ldm.errors import ConfigError

RESIZE_MODES = ("just-resize", "crop", "fill")  # A1111's resize_mode 0, 1, 2
INPAINTING_FILLS = ("fill", "original", "latent-noise", "latent-nothing")  # A1111's inpainting_fill 0..3
FILL_NAMES = {
    "fill": "fill",
    "original": "original",
    "latent-noise": "latent noise",
    "latent-nothing": "latent nothing",
}
# A1111's latent upscale modes: F.interpolate's mode and antialias.
LATENT_UPSCALERS = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
PIXEL_UPSCALERS = ("Lanczos", "Nearest")  # decode, resize the picture, encode again
UPSCALERS = (*LATENT_UPSCALERS, *PIXEL_UPSCALERS)


def check_image_settings(r: Any) -> None:
    if r.strength is not None and not (isinstance(r.strength, (int, float)) and 0 <= r.strength <= 1):
        raise ConfigError(f"strength must be a number from 0 to 1, got {r.strength}")
    if r.resize_mode not in RESIZE_MODES:
        raise ConfigError(f"unknown resize mode {r.resize_mode!r}; choose one of {', '.join(RESIZE_MODES)}")
    if r.mask_blur is not None and (not isinstance(r.mask_blur, int) or not 0 <= r.mask_blur <= 256):
        raise ConfigError(f"mask blur must be a whole number of pixels from 0 to 256, got {r.mask_blur}")
    if not isinstance(r.inpaint_padding, int) or r.inpaint_padding < 0:
        raise ConfigError(f"inpaint padding must be a whole number of pixels from 0 up, got {r.inpaint_padding}")
    if r.inpainting_fill not in INPAINTING_FILLS:
        raise ConfigError(f"unknown inpainting fill {r.inpainting_fill!r}; choose one of {', '.join(INPAINTING_FILLS)}")
    if r.hires_scale is not None and not (isinstance(r.hires_scale, (int, float)) and 1 <= r.hires_scale <= 8):
        raise ConfigError(f"hires scale must be a number from 1 to 8, got {r.hires_scale}")
    if r.hires_resize is not None:
        w, h = r.hires_resize
        if not all(isinstance(v, int) and v >= 0 and v % 8 == 0 for v in (w, h)) or not (w or h):
            raise ConfigError(f"hires resize must be WxH in multiples of 8 (one may be 0), got {w}x{h}")
    if not isinstance(r.hires_steps, int) or not 0 <= r.hires_steps <= 1000:
        raise ConfigError(
            f"hires steps must be a whole number from 0 to 1000 (0: as the first pass), got {r.hires_steps}"
        )
    if r.hires_upscaler not in UPSCALERS:
        raise ConfigError(f"unknown hires upscaler {r.hires_upscaler!r}; choose one of {', '.join(UPSCALERS)}")


def hires(r: Any) -> bool:
    return r.hires_scale is not None or r.hires_resize is not None


def hires_size(r: Any) -> tuple[int, int]:
    """The hires pass's width and height (A1111's calculate_target_resolution; one resize side 0 keeps the aspect).
    Both resize sides given: the first pass is upscaled to cover them and then cropped (see hires.py)."""
    if r.hires_resize is None:
        return int(r.width * r.hires_scale) // 8 * 8, int(r.height * r.hires_scale) // 8 * 8
    w, h = r.hires_resize
    if not h:
        h = w * r.height // r.width // 8 * 8
    if not w:
        w = h * r.width // r.height // 8 * 8
    return w, h


def image_fields(r: Any) -> dict[str, object]:
    """A1111's infotext fields for these settings, only where the generation used them."""
    masked = r.mask_blur is not None
    fields: dict[str, object] = {
        "Denoising strength": r.strength,
        "Resize mode": r.resize_mode if r.resize_mode != "just-resize" and r.strength is not None else None,
        "Mask blur": r.mask_blur,
        "Mask mode": "Inpaint not masked" if masked and r.mask_invert else None,
        "Masked content": FILL_NAMES[r.inpainting_fill] if masked and r.inpainting_fill != "original" else None,
        "Inpaint area": "Only masked" if masked and r.inpaint_full_res else None,
        "Masked area padding": r.inpaint_padding if masked and r.inpaint_full_res else None,
    }
    if hires(r):
        if r.hires_resize is None:
            scale = r.hires_scale
            fields["Hires upscale"] = int(scale) if float(scale).is_integer() else scale  # A1111 writes "2", not "2.0"
        else:
            fields["Hires resize"] = "{}x{}".format(*r.hires_resize)
        fields["Hires steps"] = r.hires_steps or None
        fields["Hires upscaler"] = r.hires_upscaler
    return fields


def read_image_fields(fields: dict[str, str]) -> dict[str, Any]:
    """The settings an infotext's fields give (popped from `fields`); ValueError on a bad number."""
    given: dict[str, Any] = {}
    if "Denoising strength" in fields:
        given["strength"] = float(fields.pop("Denoising strength"))
    if "Resize mode" in fields:
        given["resize_mode"] = fields.pop("Resize mode")
    if "Mask blur" in fields:
        given["mask_blur"] = int(fields.pop("Mask blur"))
    if fields.get("Mask mode") == "Inpaint not masked":
        given["mask_invert"] = bool(fields.pop("Mask mode"))
    if "Masked content" in fields:
        names = {v: k for k, v in FILL_NAMES.items()}
        given["inpainting_fill"] = names.get(fields.pop("Masked content"), "unknown")
    if fields.get("Inpaint area") == "Only masked":
        given["inpaint_full_res"] = bool(fields.pop("Inpaint area"))
    if "Masked area padding" in fields:
        given["inpaint_padding"] = int(fields.pop("Masked area padding"))
    if "Hires upscale" in fields:
        scale = float(fields.pop("Hires upscale"))
        given["hires_scale"] = int(scale) if scale == math.floor(scale) else scale
    if "Hires resize" in fields:
        w, _, h = fields.pop("Hires resize").partition("x")
        given["hires_resize"] = (int(w), int(h))
    if "Hires steps" in fields:
        given["hires_steps"] = int(fields.pop("Hires steps"))
    if "Hires upscaler" in fields:
        given["hires_upscaler"] = fields.pop("Hires upscaler")
    return given
