"""The request bodies of AUTOMATIC1111's /sdapi/v1/txt2img and /img2img, as its API declares them.

Every field is optional and may be null (A1111 builds these models from its processing classes' signatures,
and clients such as webuiapi send every field, nulls included); None means "the server's default". Fields
ldm does not know are kept (`model_extra`) so the route can log them, as A1111's pydantic models drop them.
NaN and infinities are refused (422), whatever JSON parser the client used.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Txt2ImgBody(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    prompt: str | None = None
    negative_prompt: str | None = None
    styles: list[str] | None = None
    seed: int | None = None
    subseed: int | None = None
    subseed_strength: float | None = None
    seed_resize_from_h: int | None = None
    seed_resize_from_w: int | None = None
    sampler_name: str | None = None
    sampler_index: str | None = None
    scheduler: str | None = None
    batch_size: int | None = None
    n_iter: int | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    distilled_cfg_scale: float | None = None
    width: int | None = None
    height: int | None = None
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool | None = None
    do_not_save_grid: bool | None = None
    eta: float | None = None
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool | None = None
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool | None = None
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None
    script_name: str | None = None
    script_args: list[Any] | None = None
    send_images: bool | None = None
    save_images: bool | None = None
    alwayson_scripts: dict[str, Any] | None = None
    infotext: str | None = None
    force_task_id: str | None = None
    # the hires fix (txt2img only; img2img ignores them, as A1111's img2img model has none)
    enable_hr: bool | None = None
    firstphase_width: int | None = None
    firstphase_height: int | None = None
    hr_scale: float | None = None
    hr_upscaler: str | None = None
    hr_second_pass_steps: int | None = None
    hr_resize_x: int | None = None
    hr_resize_y: int | None = None
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str | None = None
    hr_negative_prompt: str | None = None
    hr_cfg: float | None = None
    hr_distilled_cfg: float | None = None


class Img2ImgBody(Txt2ImgBody):
    init_images: list[str] | None = None
    resize_mode: int | None = None
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int | None = None
    mask_blur_y: int | None = None
    mask_blur: int | None = None
    mask_round: bool | None = None
    inpainting_fill: int | None = None
    inpaint_full_res: bool | None = None
    inpaint_full_res_padding: int | None = None
    inpainting_mask_invert: int | None = None
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool | None = None


class PngInfoBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    image: str
