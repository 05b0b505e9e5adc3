"""What one generation is asked to do: every setting, its default and its check in one frozen dataclass.

A request round-trips with AUTOMATIC1111's `parameters` text (`to_infotext` / `from_infotext`): the PNG writer,
the CLI and a server all read and write settings through here. Fields of an infotext that ldm does not know
are kept in `extra`, in their order, and written back.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from dataclasses import dataclass, field
from typing import Any

from ldm.errors import ConfigError
from ldm.generate.image_settings import check_image_settings, image_fields, read_image_fields
from ldm.outputs.infotext import format_infotext, parse_infotext
from ldm.sampling import samplers
from ldm.text import emphasis as emphases

# A1111's own names for the settings it writes, in its order (Schedule type only when not automatic).
KEYS = {"steps": "Steps", "sampler": "Sampler", "karras": "Schedule type", "guidance": "CFG scale", "seed": "Seed",
        "size": "Size", "clip_skip": "Clip skip", "eta": "Eta"}  # fmt: skip
VAE_DECODERS = ("full", "taesd")


@dataclass(frozen=True)
class GenerationRequest:
    """Settings of one txt2img call. Defaults are SD v1's (diffusers' StableDiffusionPipeline)."""

    prompt: str | tuple[str, ...] = ""  # one prompt, or one per batch entry
    negative_prompt: str | tuple[str, ...] = ""  # the unconditional side of guidance; one, or one per prompt
    steps: int = 50
    guidance: float = 7.5
    sampler: str = samplers.DEFAULT_SAMPLER
    karras: bool = False
    width: int = 512
    height: int = 512
    clip_skip: int = 1  # A1111's count: 1 = the last CLIP layer, 2 = the one before
    eta: float = 0.0  # DDIM's noise; only samplers that take it accept a non-zero value
    seed: int | None = None  # image i uses seed + i; None: a random seed, chosen when the generation starts
    batch_size: int = 1  # images per prompt
    vae_tiling: bool = False  # decode in overlapping tiles: large images in bounded memory
    vae_slicing: bool = False  # decode a batch one image at a time
    # Image-conditioned generation (ldm/generate/img2img.py); None where a kind of generation does not use it.
    strength: float | None = None  # A1111's denoising strength: img2img, inpainting, and the hires fix's pass
    resize_mode: str = "just-resize"  # how an init image of another size is fitted (A1111's 0, 1, 2)
    mask_blur: int | None = None  # inpainting: Gaussian blur of the mask, in pixels (A1111's default is 4)
    mask_invert: bool = False  # inpainting: black repaints, white keeps
    inpaint_full_res: bool = False  # inpainting "only masked": sample the mask's box at full size, paste it back
    inpaint_padding: int = 32  # pixels around the mask's box, "only masked"
    inpainting_fill: str = "original"  # what a 4-channel model starts from under the mask
    hires_scale: float | None = None  # the hires fix: a second pass at this scale (or hires_resize)
    hires_resize: tuple[int, int] | None = None  # the hires fix's target width and height instead of a scale
    hires_steps: int = 0  # steps of the hires pass; 0: the same as the first pass
    hires_upscaler: str = "Latent"  # A1111's upscaler names: the Latent modes, Lanczos, Nearest
    emphasis: str = emphases.DEFAULT  # how prompt weights act (ldm/text/emphasis.py; A1111's option)
    vae_decoder: str = "full"  # "taesd": the pipeline's TAESD decodes (fast, approximate); A1111 writes `VAE: taesd`
    extra: dict[str, str] = field(default_factory=dict, compare=False)  # infotext fields ldm does not use

    def __post_init__(self) -> None:
        if isinstance(self.prompt, list) or isinstance(self.negative_prompt, list):
            raise ConfigError("give prompts as a str or a tuple of str")
        if not self.prompts or len(self.negative_prompts) != len(self.prompts):
            raise ConfigError("give one prompt or a list of prompts, and one negative prompt or one per prompt")
        for side in ("width", "height"):
            value = getattr(self, side)
            if not isinstance(value, int) or value < 8 or value % 8:
                raise ConfigError(f"{side} must be a positive multiple of 8, got {value}")
        if not isinstance(self.guidance, (int, float)) or not math.isfinite(self.guidance):
            raise ConfigError(f"guidance must be a finite number, got {self.guidance}")
        if not isinstance(self.clip_skip, int) or self.clip_skip < 1:
            raise ConfigError(f"clip_skip must be a whole number from 1 up, got {self.clip_skip}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be a whole number from 0 to 2^63 - 1, got {self.seed}")
        samplers.check(self.sampler, self.steps, karras=self.karras, eta=self.eta)
        check_image_settings(self)
        emphases.check_mode(self.emphasis)
        if self.vae_decoder not in VAE_DECODERS:
            raise ConfigError(f"vae_decoder must be one of {', '.join(VAE_DECODERS)}, got {self.vae_decoder!r}")

    @property
    def prompts(self) -> tuple[str, ...]:
        return (self.prompt,) if isinstance(self.prompt, str) else tuple(self.prompt)

    @property
    def negative_prompts(self) -> tuple[str, ...]:
        if isinstance(self.negative_prompt, str):
            return (self.negative_prompt,) * len(self.prompts)
        return tuple(self.negative_prompt)

    def batch(self) -> tuple[list[str], list[str]]:
        """Prompt and negative of every image, prompt-major (as diffusers orders a batch)."""
        prompts = [p for p in self.prompts for _ in range(self.batch_size)]
        negatives = [n for n in self.negative_prompts for _ in range(self.batch_size)]
        return prompts, negatives

    def with_seed(self) -> GenerationRequest:
        """This request with a seed: its own, or a fresh random one (never the process's `random` state)."""
        return self if self.seed is not None else dataclasses.replace(self, seed=secrets.randbits(32))

    def replace(self, **changes: Any) -> GenerationRequest:
        """A copy with `changes`, checked; None values mean "keep this request's"."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_infotext(self, index: int = 0, **model: str | None) -> str:
        """The `parameters` text of image `index` of this request (its own prompt and seed), as A1111 writes it.

        `model` adds what the request does not hold, e.g. model_hash="...", model="name"."""
        prompts, negatives = self.batch()
        fields: dict[str, object] = {
            KEYS["steps"]: self.steps,
            KEYS["sampler"]: samplers.SPECS[self.sampler].display,
            KEYS["karras"]: "Karras" if self.karras else None,
            KEYS["guidance"]: self.guidance,
            KEYS["seed"]: None if self.seed is None else self.seed + index,
            KEYS["size"]: f"{self.width}x{self.height}",
            "Model hash": model.get("model_hash"),
            "Model": model.get("model"),
            "VAE": "taesd" if self.vae_decoder == "taesd" else None,
            KEYS["clip_skip"]: self.clip_skip if self.clip_skip != 1 else None,
            KEYS["eta"]: self.eta if self.eta else None,
            **image_fields(self),
            "Emphasis": emphases.A1111_NAMES[self.emphasis] if self.emphasis != emphases.DEFAULT else None,
        }
        fields.update((k, v) for k, v in self.extra.items() if k not in fields or fields[k] is None)
        return format_infotext(prompts[index], negatives[index], fields)

    @classmethod
    def from_infotext(cls, text: str) -> GenerationRequest:
        """The request a `parameters` text (ours or A1111's) describes; fields ldm does not use go to `extra`."""
        prompt, negative, fields = parse_infotext(text)
        given: dict[str, Any] = {"prompt": prompt, "negative_prompt": negative}
        try:
            if "Steps" in fields:
                given["steps"] = int(fields.pop("Steps"))
            if "Sampler" in fields:
                given["sampler"], karras = sampler_from_display(fields.pop("Sampler"))
                given["karras"] = karras
            schedule = fields.pop("Schedule type", "Automatic")
            if schedule not in ("Automatic", "Karras"):
                raise ConfigError(f"schedule type {schedule!r} is not one ldm has; it has Automatic and Karras")
            given["karras"] = given.get("karras", False) or schedule == "Karras"
            if "CFG scale" in fields:
                given["guidance"] = float(fields.pop("CFG scale"))
            if "Seed" in fields:
                given["seed"] = int(fields.pop("Seed"))
            if "Size" in fields:
                width, _, height = fields.pop("Size").partition("x")
                given["width"], given["height"] = int(width), int(height)
            if fields.get("VAE") == "taesd":  # any other VAE name is a file ldm does not swap in: kept in extra
                given["vae_decoder"] = fields.pop("VAE")
            if "Clip skip" in fields:
                given["clip_skip"] = int(fields.pop("Clip skip"))
            given.update(read_image_fields(fields))
            if "Eta" in fields and "eta" in samplers.SPECS[given.get("sampler", cls.sampler)].options:
                given["eta"] = float(fields.pop("Eta"))  # A1111 writes an eta for samplers that ignore it too
            if "Emphasis" in fields:
                given["emphasis"] = emphases.from_a1111(fields.pop("Emphasis"))
        except ValueError as e:
            raise ConfigError(f"a setting in this infotext is not a number ({e}); fix it or leave it out") from None
        return cls(**given, extra=fields)


def sampler_from_display(display: str) -> tuple[str, bool]:
    """Our sampler name for an A1111 one, and whether it named Karras the old way ("DPM++ 2M Karras")."""
    karras = display.strip().lower().endswith(" karras")
    name = samplers.by_display_name(display.strip()[: -len(" karras")] if karras else display)
    if name is None:
        known = ", ".join(spec.display for spec in samplers.SPECS.values())
        raise ConfigError(f"sampler {display!r} is not one ldm has; use one of {known}")
    return name, karras


def check_for_model(request: GenerationRequest, text_layers: int) -> None:
    """The checks that need the model: clip_skip counts its text encoder's layers."""
    if request.clip_skip > text_layers:
        raise ConfigError(f"clip_skip must be between 1 and {text_layers}, got {request.clip_skip}")
