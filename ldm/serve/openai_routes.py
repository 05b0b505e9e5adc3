"""OpenAI's images API: /v1/images/generations, /v1/images/edits (multipart) and /v1/models, as the `openai`
client calls them (and stable-diffusion.cpp's sd-server answers them). Settings OpenAI has no field for
(steps, sampler, guidance) are the loaded model's defaults; `model`, `quality` and `style` are ignored.

An edit's mask follows OpenAI: where the mask (or, with no mask, the image itself) is fully transparent is
repainted. A mask without transparency is read as A1111 reads one: white repaints. An image with neither is
an img2img at A1111's default strength.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from PIL import Image
from pydantic import BaseModel, ConfigDict
from starlette.datastructures import UploadFile

from ldm.errors import ConfigError
from ldm.generate.image_input import default_size
from ldm.serve import awaiting
from ldm.serve.generation_job import GenerationJob
from ldm.serve.images import FORMATS, BadImage, from_bytes, to_base64
from ldm.serve.server import Server
from ldm.serve.worker import Job

router = APIRouter(prefix="/v1")


class GenerateBody(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    prompt: str
    n: int | None = None
    size: str | None = None
    response_format: str | None = None
    output_format: str | None = None
    output_compression: int | None = None


@router.get("/models")
async def models(request: Request) -> dict[str, Any]:
    server: Server = request.app.state.server
    created = int(time.time())
    data = [{"id": m.name, "object": "model", "created": created, "owned_by": "ldm"} for m in server.catalog.models()]
    return {"object": "list", "data": data}


@router.post("/images/generations")
async def generations(body: GenerateBody, request: Request) -> dict[str, Any]:
    settings = {"prompt": body.prompt, **_size(body.size), **_count(body.n)}
    return await _run(request, "txt2img", settings, None, None, body.response_format, body.output_format,
                      body.output_compression)  # fmt: skip


@router.post("/images/edits")
async def edits(request: Request) -> dict[str, Any]:
    server: Server = request.app.state.server
    form = await request.form(max_files=4, max_fields=32, max_part_size=server.settings.limits.body_bytes)
    prompt = form.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise ConfigError("prompt is required: send it as a form field")
    upload = form.get("image") or form.get("image[]")
    if not isinstance(upload, UploadFile):
        raise ConfigError("image is required: send the picture as a file field named image")
    limit = server.settings.limits.image_pixels
    image = from_bytes(await upload.read(), "image", limit)
    mask_file = form.get("mask")
    mask = from_bytes(await mask_file.read(), "mask", limit) if isinstance(mask_file, UploadFile) else None
    repaint = await run_in_threadpool(_repaint_mask, image, mask)
    size = _size(_text(form, "size"))
    settings = {"prompt": prompt, **(size or dict(zip(("width", "height"), default_size(image), strict=True))),
                **_count(_number(form, "n"))}  # fmt: skip
    if repaint is not None:
        settings.update(strength=1.0, mask_blur=0)
    return await _run(request, "img2img", settings, image, repaint, _text(form, "response_format"),
                      _text(form, "output_format"), _number(form, "output_compression"))  # fmt: skip


async def _run(request: Request, kind: str, settings: dict[str, Any], image: Image.Image | None,
               mask: Image.Image | None, response_format: str | None, output_format: str | None,
               compression: int | None) -> dict[str, Any]:  # fmt: skip
    server: Server = request.app.state.server
    if response_format not in (None, "b64_json"):
        raise ConfigError(f"response_format {response_format!r} is not served; ldm-serve answers b64_json only")
    fmt = (output_format or "png").lower()
    if fmt not in FORMATS:
        raise ConfigError(f"output_format must be png, jpeg or webp, got {output_format!r}")
    quality = 95 if compression is None else compression
    if not 0 <= quality <= 100:
        raise ConfigError(f"output_compression must be from 0 to 100, got {compression}")
    work = GenerationJob(settings, 1, server.settings.limits, server.options, image, mask)
    if server.worker.pipe is not None:
        work.request_for(server.worker.pipe)
    made = await awaiting.run(server.worker, Job(kind, work, server.options.model), request)
    images = await run_in_threadpool(
        lambda: [to_base64(i, t, fmt, quality) for i, t in zip(made.images, made.infotexts, strict=True)]
    )
    size = f"{made.request.width}x{made.request.height}"
    return {"created": int(time.time()), "data": [{"b64_json": b} for b in images], "output_format": fmt, "size": size}


def _size(text: str | None) -> dict[str, int]:
    if text in (None, "", "auto"):
        return {}
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise ConfigError(f"size must be WIDTHxHEIGHT, e.g. 512x512, got {text!r}")
    return {"width": int(width), "height": int(height)}


def _count(n: int | None) -> dict[str, int]:
    if n is None:
        return {}
    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    return {"batch_size": n}


def _text(form, key: str) -> str | None:
    value = form.get(key)
    return value if isinstance(value, str) else None


def _number(form, key: str) -> int | None:
    text = _text(form, key)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{key} must be a whole number, got {text!r}") from None


def _repaint_mask(image: Image.Image, mask: Image.Image | None) -> Image.Image | None:
    """White where the picture is to be repainted, or None for a plain img2img."""
    if mask is not None and mask.size != image.size:
        raise BadImage(f"mask is {mask.size[0]}x{mask.size[1]} but image is {image.size[0]}x{image.size[1]}")
    source = mask if mask is not None else image
    if "A" in source.getbands() or source.info.get("transparency") is not None:
        alpha = np.asarray(source.convert("RGBA"))[..., 3]
        if mask is None and alpha.min() > 0:
            return None
        return Image.fromarray(np.where(alpha == 0, 255, 0).astype(np.uint8))
    return None if mask is None else mask.convert("L")
