"""Images out: tensors to PIL, AUTOMATIC1111-style `parameters` text, and PNG files that never overwrite."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ldm.errors import LdmError
from ldm.permissions import usual_permissions

# Our sampler names -> the names AUTOMATIC1111 writes (and other tools read back).
SAMPLER_DISPLAY_NAMES = {
    "ddim": "DDIM",
    "plms": "PLMS",
    "ddpm": "DDPM",
    "euler": "Euler",
    "euler_a": "Euler a",
    "heun": "Heun",
    "dpm2": "DPM2",
    "lms": "LMS",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "unipc": "UniPC",
}


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> RGB images, rounded as diffusers rounds them."""
    array = (images.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in (array * 255).round().astype(np.uint8)]


def format_parameters(p: dict[str, Any]) -> str:
    """The `parameters` text AUTOMATIC1111 writes: prompt, negative prompt, then `Key: value` pairs."""
    fields = {
        "Steps": p["steps"],
        "Sampler": SAMPLER_DISPLAY_NAMES.get(p["sampler"], p["sampler"]),
        "Schedule type": "Karras" if p.get("karras") else None,
        "CFG scale": p["guidance"],
        "Seed": p["seed"],
        "Size": f"{p['width']}x{p['height']}",
        "Model hash": p.get("model_hash"),
        "Model": p.get("model"),
        "Clip skip": p["clip_skip"] if p.get("clip_skip", 1) != 1 else None,
        "Eta": p["eta"] if p.get("eta") else None,
    }
    tail = ", ".join(f"{k}: {_quote(v)}" for k, v in fields.items() if v is not None)
    lines = [p["prompt"]]
    if p.get("negative_prompt"):
        lines.append(f"Negative prompt: {p['negative_prompt']}")
    return "\n".join([*lines, tail])


def _quote(value: Any) -> str:
    text = str(value)
    return f'"{text}"' if any(c in text for c in ',:"') else text  # A1111 quotes values that hold separators


def parse_parameters(text: str) -> dict[str, Any]:
    """Read a `parameters` text (ours or AUTOMATIC1111's) back into our setting names."""
    lines = text.strip().split("\n")
    tail = lines.pop() if len(lines) > 1 else ""
    negative = ""
    neg = [i for i, line in enumerate(lines) if line.startswith("Negative prompt: ")]
    if neg:
        negative = "\n".join(lines[neg[0] :])[len("Negative prompt: ") :]
        lines = lines[: neg[0]]
    fields = {k: v.strip('"') for k, v in re.findall(r'\s*([\w \-/+]+):\s*("(?:[^"]|\\")*"|[^,]*)(?:,|$)', tail)}
    by_display = {v: k for k, v in SAMPLER_DISPLAY_NAMES.items()}
    width, _, height = fields.get("Size", "0x0").partition("x")
    result: dict[str, Any] = {
        "prompt": "\n".join(lines),
        "negative_prompt": negative,
        "steps": int(fields["Steps"]),
        "sampler": by_display.get(fields["Sampler"], fields["Sampler"]),
        "karras": fields.get("Schedule type") == "Karras",
        "guidance": float(fields["CFG scale"]),
        "seed": int(fields["Seed"]),
        "width": int(width),
        "height": int(height),
        "clip_skip": int(fields.get("Clip skip", 1)),
        "eta": float(fields.get("Eta", 0.0)),
    }
    for key, name in (("model_hash", "Model hash"), ("model", "Model")):
        if name in fields:
            result[key] = fields[name]
    return result


def save_png(image: Image.Image, outdir: Path, seed: int, parameters: str) -> Path:
    """Write `NNNNN-<seed>.png` in `outdir` under the next free number; never replaces an existing file."""
    info = PngInfo()
    info.add_text("parameters", parameters)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".ldm-", suffix=".png", dir=outdir)
    except OSError as e:
        raise LdmError(f"cannot write an image into {outdir} ({e.strerror}); choose a writable --outdir") from None
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=info)
        usual_permissions(Path(tmp))
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
        Path(tmp).unlink(missing_ok=True)


def next_number(outdir: Path) -> int:
    """One past the highest `NNNNN-` number in `outdir`, as AUTOMATIC1111 numbers its outputs."""
    numbers = [int(m.group(1)) for p in outdir.iterdir() if (m := re.match(r"(\d{5,})-", p.name))]
    return max(numbers, default=-1) + 1
