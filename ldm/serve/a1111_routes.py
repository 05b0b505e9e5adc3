"""AUTOMATIC1111's /sdapi/v1 routes (field names, defaults and shapes of its modules/api/api.py).

Generation routes check a request against the loaded model's defaults and the server's limits before it is
queued (a bad one costs no queue slot), then await the worker. Everything else answers at once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from PIL import Image

from ldm.errors import ConfigError
from ldm.generate.image_input import default_size
from ldm.generate.image_settings import LATENT_UPSCALERS, PIXEL_UPSCALERS
from ldm.serve import a1111, awaiting
from ldm.serve.a1111_schema import Img2ImgBody, PngInfoBody, Txt2ImgBody
from ldm.serve.generation_job import GenerationJob, Made
from ldm.serve.images import from_base64, to_base64
from ldm.serve.server import Server
from ldm.serve.worker import Job

log = logging.getLogger("ldm.serve")
router = APIRouter(prefix="/sdapi/v1")


def server_of(request: Request) -> Server:
    return request.app.state.server


@router.post("/txt2img")
async def txt2img(body: Txt2ImgBody, request: Request) -> dict[str, Any]:
    return await _generate(body, request, "txt2img")


@router.post("/img2img")
async def img2img(body: Img2ImgBody, request: Request) -> dict[str, Any]:
    return await _generate(body, request, "img2img")


async def _generate(body: Txt2ImgBody, request: Request, kind: str) -> dict[str, Any]:
    server = server_of(request)
    if body.model_extra:
        log.info("%s: ignored fields ldm does not know: %s", kind, ", ".join(sorted(body.model_extra)))
    settings = a1111.settings(body)
    image = mask = None
    if isinstance(body, Img2ImgBody):
        image, mask = await run_in_threadpool(_pictures, body, server)  # decoding is work: off the event loop
        if body.width is None and body.height is None:
            settings["width"], settings["height"] = default_size(image)
    override = body.override_settings or {}
    # The options' model, or the one override_settings names for this request only (A1111 restores the options'
    # model afterwards unless override_settings_restore_afterwards is false).
    model = server.options.model
    if "sd_model_checkpoint" in override:
        model = server.catalog.find(str(override["sd_model_checkpoint"])).filename
    n_iter = 1 if body.n_iter is None else body.n_iter
    if n_iter < 1:
        raise ConfigError(f"n_iter must be at least 1, got {n_iter}")
    save_to = server.settings.outdir / f"{kind}-images" if body.save_images else None
    work = GenerationJob(settings, n_iter, server.settings.limits, server.options, image, mask, save_to)
    if server.worker.pipe is not None:
        work.request_for(server.worker.pipe)  # refused now, not after waiting in the queue
    made: Made = await awaiting.run(server.worker, Job(kind, work, model, n_iter), request)
    if body.override_settings_restore_afterwards is False and model != server.options.model:
        server.options = dataclasses.replace(server.options, model=model)
    images = await run_in_threadpool(
        lambda: [to_base64(i, t) for i, t in zip(made.images, made.infotexts, strict=True)]
    )
    parameters = body.model_dump(exclude=set(body.model_extra or ()))
    if isinstance(body, Img2ImgBody) and not body.include_init_images:
        parameters["init_images"], parameters["mask"] = None, None
    info = a1111.info(made, body)
    return {"images": images if body.send_images is not False else [], "parameters": parameters,
            "info": json.dumps(info)}  # fmt: skip


def _pictures(body: Img2ImgBody, server: Server) -> tuple[Image.Image, Image.Image | None]:
    if not body.init_images:
        raise ConfigError("init_images is empty; send one base64 picture to start from")
    limit = server.settings.limits.image_pixels
    image = from_base64(body.init_images[0], "init_images[0]", limit)
    mask = from_base64(body.mask, "mask", limit) if body.mask else None
    return image, mask


@router.get("/progress")
async def progress(request: Request, skip_current_image: bool = False) -> dict[str, Any]:
    return server_of(request).worker.progress.snapshot(with_image=not skip_current_image)


@router.post("/interrupt")
async def interrupt(request: Request) -> dict:
    server_of(request).worker.progress.interrupt()
    return {}


@router.post("/skip")
async def skip(request: Request) -> None:
    server_of(request).worker.progress.skip()


@router.get("/options")
async def get_options(request: Request) -> dict[str, Any]:
    server = server_of(request)
    current = server.current()
    return server.options.a1111(current.title, current.sha256)


@router.post("/options")
async def set_options(given: dict[str, Any], request: Request) -> None:
    server = server_of(request)
    options = server.options.changed(given)  # checked whole before anything changes
    if "sd_model_checkpoint" in given:
        wanted = server.catalog.find(str(given["sd_model_checkpoint"])).filename
        if wanted != server.worker.model:
            await awaiting.run(server.worker, Job("switch model", lambda pipe, control: None, wanted), request)
        options = dataclasses.replace(options, model=wanted)
    server.options = options


@router.get("/sd-models")
async def sd_models(request: Request) -> list[dict[str, Any]]:
    return [m.listing() for m in server_of(request).catalog.models()]


@router.post("/refresh-checkpoints")
async def refresh_checkpoints() -> None:
    return None  # the models folder is read again on every listing


@router.get("/samplers")
async def sampler_list() -> list[dict[str, Any]]:
    return a1111.sampler_list()


@router.get("/schedulers")
async def scheduler_list() -> list[dict[str, Any]]:
    return a1111.scheduler_list()


@router.get("/upscalers")
async def upscalers() -> list[dict[str, Any]]:
    return [{"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4.0}
            for name in ("None", *PIXEL_UPSCALERS)]  # fmt: skip


@router.get("/latent-upscale-modes")
async def latent_upscale_modes() -> list[dict[str, str]]:
    return [{"name": name} for name in LATENT_UPSCALERS]


@router.get("/sd-vae")
async def sd_vae() -> list:
    return []


@router.get("/loras")
async def loras(request: Request) -> list[dict[str, Any]]:
    from ldm.checkpoints.folders import files_in
    from ldm.networks.lora_file import EXTENSIONS

    folder = server_of(request).settings.lora_dir
    files = files_in(folder, EXTENSIONS, confined=True)
    return [{"name": p.stem, "alias": p.stem, "path": p.relative_to(folder).as_posix(), "metadata": {}} for p in files]


@router.get("/embeddings")
async def embeddings(request: Request) -> dict[str, Any]:
    pipe = server_of(request).worker.pipe
    loaded = {} if pipe is None else pipe.embeddings.by_name
    skipped = [] if pipe is None else pipe.embeddings.skipped
    entry = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None}
    return {
        "loaded": {name: {**entry, "shape": e.vectors.shape[1], "vectors": e.vectors.shape[0]}
                   for name, e in loaded.items()},
        "skipped": {p.stem: {**entry, "shape": None, "vectors": None} for p in skipped},
    }  # fmt: skip


@router.get("/scripts")
async def scripts() -> dict[str, list]:
    return {"txt2img": [], "img2img": []}


@router.get("/script-info")
async def script_info() -> list:
    return []


@router.post("/png-info")
async def png_info(body: PngInfoBody, request: Request) -> dict[str, Any]:
    image = from_base64(body.image, "image", server_of(request).settings.limits.image_pixels)
    text = image.info.get("parameters", "")
    items = {k: v for k, v in image.info.items() if isinstance(v, str) and k != "parameters"}
    return {
        "info": text if isinstance(text, str) else "",
        "items": items,
        "parameters": a1111.png_info_parameters(text),
    }
