"""AUTOMATIC1111's API fields <-> ldm's: a txt2img / img2img body -> GenerationRequest settings, and what its
responses carry (the `info` JSON of Processed.js(), png-info's parsed parameters, the sampler lists).

A field ldm cannot honour (face restoration, variation seeds, scripts, a refiner) is refused with a 422 that
names it, rather than silently ignored; fields that only tune what ldm does not have (s_churn at 0, eta for a
sampler without one, do_not_save_grid) are accepted as A1111 accepts them.
"""

from __future__ import annotations

from typing import Any

from ldm import __version__
from ldm.errors import ConfigError, LdmError
from ldm.generate.image_settings import INPAINTING_FILLS, RESIZE_MODES, UPSCALERS
from ldm.generate.request import GenerationRequest, sampler_from_display
from ldm.outputs.infotext import parse_infotext
from ldm.sampling import samplers
from ldm.serve.a1111_schema import Img2ImgBody, Txt2ImgBody
from ldm.text import emphasis

SCHEDULERS = {"automatic": ("Automatic", False), "karras": ("Karras", True)}  # name -> (label, karras)


class NotFound(LdmError):
    """A named thing the server does not have (HTTP 404, as A1111 answers an unknown sampler)."""


def sampler(name: str) -> tuple[str, bool | None]:
    """Our sampler for an A1111 name ("DPM++ 2M", "dpmpp_2m", the old "DPM++ 2M Karras"), and the Karras
    schedule when the name says so (None: the name does not say)."""
    try:
        ours, karras = sampler_from_display(name)
    except ConfigError as e:
        raise NotFound(f"Sampler not found: {e}; GET /sdapi/v1/samplers lists them") from None
    return ours, karras or None


def schedule(name: str | None) -> bool | None:
    if name is None:
        return None
    key = name.strip().lower()
    if key not in SCHEDULERS:
        raise ConfigError(f"scheduler {name!r} is not one ldm has; it has {', '.join(SCHEDULERS)}")
    return SCHEDULERS[key][1]


def settings(body: Txt2ImgBody) -> dict[str, Any]:
    """GenerationRequest fields of a txt2img or img2img body (None: the server's default)."""
    _refuse_unsupported(body)
    given: dict[str, Any] = {
        "prompt": body.prompt or "",
        "negative_prompt": body.negative_prompt or "",
        "steps": body.steps,
        "guidance": body.cfg_scale,
        "width": body.width,
        "height": body.height,
        "batch_size": body.batch_size,
    }
    if body.seed is not None and body.seed != -1:
        if body.seed < 0:
            raise ConfigError(f"seed must be -1 (random) or from 0 up, got {body.seed}")
        given["seed"] = body.seed
    name = body.sampler_name or body.sampler_index
    karras = None
    if name:
        given["sampler"], karras = sampler(name)
    scheduled = schedule(body.scheduler)
    given["karras"] = scheduled if scheduled is not None else karras
    chosen = given.get("sampler")
    if body.eta is not None and chosen is not None and "eta" in samplers.SPECS[chosen].options:
        given["eta"] = body.eta  # A1111 passes eta only to the samplers that take one
    override = body.override_settings or {}
    if "CLIP_stop_at_last_layers" in override:
        given["clip_skip"] = override["CLIP_stop_at_last_layers"]
    if "emphasis" in override:
        given["emphasis"] = emphasis.from_a1111(str(override["emphasis"]))
    if isinstance(body, Img2ImgBody):
        given.update(_img2img_settings(body))
    elif body.enable_hr:
        given.update(_hires_settings(body))
    return {k: v for k, v in given.items() if v is not None}


def _hires_settings(body: Txt2ImgBody) -> dict[str, Any]:
    if body.hr_upscaler is not None and body.hr_upscaler not in UPSCALERS:
        raise NotFound(f"upscaler {body.hr_upscaler!r} not found; GET /sdapi/v1/upscalers lists them")
    for field, value in (("hr_prompt", body.hr_prompt), ("hr_negative_prompt", body.hr_negative_prompt)):
        own = body.prompt if field == "hr_prompt" else body.negative_prompt
        if value and value != (own or ""):
            raise ConfigError(f"{field} other than the first pass's is not supported; leave it empty")
    first = body.sampler_name or body.sampler_index
    if body.hr_sampler_name and (first is None or sampler(body.hr_sampler_name)[0] != sampler(first)[0]):
        raise ConfigError("hr_sampler_name other than the first pass's is not supported; leave it null")
    resize = (body.hr_resize_x or 0, body.hr_resize_y or 0)
    return {
        "hires_scale": None if any(resize) else (body.hr_scale if body.hr_scale is not None else 2.0),
        "hires_resize": resize if any(resize) else None,
        "hires_steps": body.hr_second_pass_steps or 0,
        "hires_upscaler": body.hr_upscaler,
        "strength": body.denoising_strength if body.denoising_strength is not None else 0.7,
    }


def _img2img_settings(body: Img2ImgBody) -> dict[str, Any]:
    given: dict[str, Any] = {"strength": body.denoising_strength if body.denoising_strength is not None else 0.75}
    if body.resize_mode is not None:
        if not 0 <= body.resize_mode < len(RESIZE_MODES):
            raise ConfigError(
                f"resize_mode must be 0, 1 or 2 (ldm has no latent-upscale resize), got {body.resize_mode}"
            )
        given["resize_mode"] = RESIZE_MODES[body.resize_mode]
    if body.mask is None:
        return given
    blur = body.mask_blur
    if blur is None:
        x, y = body.mask_blur_x, body.mask_blur_y
        if x is not None and y is not None and x != y:
            raise ConfigError("mask_blur_x and mask_blur_y must be equal (ldm blurs both ways alike); give mask_blur")
        blur = x if x is not None else y
    given["mask_blur"] = 4 if blur is None else blur
    if body.inpainting_fill is not None:
        if not 0 <= body.inpainting_fill < len(INPAINTING_FILLS):
            raise ConfigError(f"inpainting_fill must be 0 to 3, got {body.inpainting_fill}")
        given["inpainting_fill"] = INPAINTING_FILLS[body.inpainting_fill]
    given["inpaint_full_res"] = True if body.inpaint_full_res is None else body.inpaint_full_res
    given["inpaint_padding"] = body.inpaint_full_res_padding if body.inpaint_full_res_padding is not None else 0
    given["mask_invert"] = bool(body.inpainting_mask_invert)
    return given


def _refuse_unsupported(body: Txt2ImgBody) -> None:
    """Fields whose non-default values ask for features ldm does not have."""
    asked = {
        "restore_faces": bool(body.restore_faces),
        "tiling": bool(body.tiling),
        "subseed_strength": bool(body.subseed_strength),
        "seed_resize_from_w": (body.seed_resize_from_w or 0) > 0,
        "seed_resize_from_h": (body.seed_resize_from_h or 0) > 0,
        "styles": bool(body.styles),
        "script_name": bool(body.script_name),
        "alwayson_scripts": bool(body.alwayson_scripts),
        "refiner_checkpoint": bool(body.refiner_checkpoint),
        "firstpass_image": bool(body.firstpass_image),
        "hr_checkpoint_name": bool(body.hr_checkpoint_name),
        "infotext": bool(body.infotext),
    }
    if isinstance(body, Img2ImgBody):
        asked["latent_mask"] = bool(body.latent_mask)
        asked["initial_noise_multiplier"] = body.initial_noise_multiplier not in (None, 1, 1.0)
        asked["init_images (more than one)"] = len(body.init_images or ()) > 1
    refused = [name for name, on in asked.items() if on]
    if refused:
        raise ConfigError(f"ldm-serve does not support {', '.join(refused)}; leave them out or at their defaults")


def info(made: Any, body: Txt2ImgBody) -> dict[str, Any]:
    """A1111's `info` (Processed.js()) for the images made (a generation_job.Made)."""
    request: GenerationRequest = made.request
    model = made.model
    prompts, negatives = request.batch()
    count = len(made.seeds)
    all_prompts = [prompts[i % len(prompts)] for i in range(count)]
    all_negatives = [negatives[i % len(negatives)] for i in range(count)]
    return {
        "prompt": prompts[0], "all_prompts": all_prompts,
        "negative_prompt": negatives[0], "all_negative_prompts": all_negatives,
        "seed": made.seeds[0] if made.seeds else request.seed, "all_seeds": made.seeds,
        "subseed": -1, "all_subseeds": [-1] * count, "subseed_strength": 0,
        "width": request.width, "height": request.height,
        "sampler_name": samplers.SPECS[request.sampler].display,
        "cfg_scale": request.guidance, "steps": request.steps, "batch_size": request.batch_size,
        "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": model.get("model"), "sd_model_hash": model.get("model_hash"),
        "sd_vae_name": "taesd" if request.vae_decoder == "taesd" else None, "sd_vae_hash": None,
        "seed_resize_from_w": -1, "seed_resize_from_h": -1,
        "denoising_strength": request.strength,
        "extra_generation_params": {"Schedule type": "Karras"} if request.karras else {},
        "index_of_first_image": 0, "infotexts": made.infotexts, "styles": body.styles or [],
        "job_timestamp": made.job_timestamp, "clip_skip": request.clip_skip,
        "is_using_inpainting_conditioning": made.inpainting_model, "version": f"ldm {__version__}",
    }  # fmt: skip


def png_info_parameters(text: str) -> dict[str, str]:
    """A1111's parse_generation_parameters, as /png-info returns it: Prompt, Negative prompt, then each field as
    text (Size also as Size-1 and Size-2)."""
    if not text:
        return {}
    prompt, negative, fields = parse_infotext(text)
    parsed = {"Prompt": prompt, "Negative prompt": negative, **fields}
    width, sep, height = fields.get("Size", "").partition("x")
    if sep:
        parsed["Size-1"], parsed["Size-2"] = width, height
    return parsed


def sampler_list() -> list[dict[str, Any]]:
    return [{"name": spec.display, "aliases": [name], "options": {}} for name, spec in samplers.SPECS.items()]


def scheduler_list() -> list[dict[str, Any]]:
    rho = {"automatic": -1, "karras": 7.0}
    return [{"name": name, "label": label, "aliases": None, "default_rho": rho[name], "need_inner_model": False}
            for name, (label, _) in SCHEDULERS.items()]  # fmt: skip
