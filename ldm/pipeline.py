"""Pipeline: the one place that wires tokenizer, text encoder, sampler, U-Net and VAE into images."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from ldm import samplers
from ldm.attention import resolve_backend, set_attention_backend
from ldm.checkpoint import Model, load_model
from ldm.config import ModelConfig
from ldm.errors import ConfigError, LdmError
from ldm.guidance import CFGDenoiser
from ldm.heap import release_free_memory
from ldm.images import to_pil
from ldm.offload import MODES, ModelOffload, offload_sequentially
from ldm.packing import pack_weights, unpack_weights
from ldm.prompt_cache import PromptCache
from ldm.tiling import tiled_decode
from ldm.tokenizer import Tokenizer

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
BUILTIN = WEIGHTS_DIR / "ldm-shapes.safetensors"
# Settings the user did not give: SD v1's (diffusers' StableDiffusionPipeline defaults).
SD_V1_DEFAULTS = {
    "steps": 50,
    "guidance": 7.5,
    "sampler": samplers.DEFAULT_SAMPLER,
    "karras": False,
    "width": 512,
    "height": 512,
    "clip_skip": 1,
    "eta": 0.0,
}


class Pipeline:
    """Text to images with an SD v1 model. `Pipeline.load(path)` then `pipe(prompt, ...)`."""

    def __init__(self, model: Model, *, device: torch.device, dtype: torch.dtype, vae_dtype: torch.dtype):
        self.model = model
        self.tokenizer = Tokenizer(length=model.config.text_encoder.max_position_embeddings)
        self.device, self.dtype, self.vae_dtype = device, dtype, vae_dtype
        self.defaults = dict(SD_V1_DEFAULTS)
        self.vae_tiling = False  # decode in overlapping 512-pixel tiles: large images in bounded memory
        self.vae_slicing = False  # decode a batch one image at a time
        self.offload: ModelOffload | None = None
        self.last_seeds: list[int] = []  # the seed of each image of the last call, in order
        self.prompt_cache = PromptCache()

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        attention: str | None = None,
        config: str | Path | ModelConfig | None = None,
        offload: str | None = None,
        compile: bool = False,
    ) -> Pipeline:
        """Load a single-file checkpoint or a diffusers folder (None: the built-in model).

        Device auto: CUDA when available, running the U-Net and text encoder in float16 (the VAE falls back
        to float32 when float16 overflows); CPU runs float32. `offload` ("model" or "sequential", see
        ldm/offload.py) keeps the weights in CPU memory and lends them to the device while they compute.
        `compile` runs the U-Net through torch.compile (the first image pays the compilation, minutes on a CPU).
        On a CPU, without offload or compile, layers pack their weights for oneDNN on first use (ldm/packing.py),
        unless they share one mapping of a pickle that ldm/mapped_pickle.py could not split.
        """
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but this PyTorch has no CUDA device; use --device cpu")
        dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        if path is None:
            if not BUILTIN.is_file():
                raise LdmError(
                    "no built-in model in this checkout; pass a checkpoint (--checkpoint / Pipeline.load(path))"
                )
            path = BUILTIN
        if isinstance(config, (str, Path)):
            config = ModelConfig.from_json(config)
        if offload is not None and offload not in MODES:
            raise ConfigError(f"unknown offload mode {offload!r}; choose one of {', '.join(MODES)}")
        model = load_model(path, config=config, dtype=dtype, device="cpu" if offload else device)
        # The VAE decoder overflows in float16 on some images; it starts in the model dtype and retries in float32.
        # Offloaded, it stays float32: its CPU copy is the one that visits the device.
        vae_dtype = torch.float32 if offload else dtype
        if offload:
            model.vae.float()
        pipe = cls(model, device=device, dtype=dtype, vae_dtype=vae_dtype)
        pipe.set_offload(offload)
        if compile:
            pipe.compile()
        elif device.type == "cpu" and not offload and not model.one_mapping:
            # Reordered for oneDNN on first use (ldm/packing.py). Not for weights on one shared mapping of a pickle
            # (ldm/mapped_pickle.py could not split it): it would keep every page beside the packed copies.
            for module in (model.text_encoder, model.unet, model.vae):
                pack_weights(module)
        pipe.set_attention(resolve_backend(attention, device))
        if path == BUILTIN:
            pipe.defaults.update(builtin_defaults())
        return pipe

    @property
    def source(self) -> Path | None:
        return self.model.path

    def compile(self) -> None:
        """Compile the U-Net's forward with torch.compile, on plain layers (ldm/packing.py's are unpacked)."""
        if self.offload is not None or any(m._forward_pre_hooks for m in self.model.unet.modules()):
            raise ConfigError("compile and offload do not combine; choose one")
        unpack_weights(self.model.unet)  # torch.compile packs weights its own way
        self.model.unet.forward = torch.compile(self.model.unet.forward, dynamic=False)

    def set_offload(self, mode: str | None) -> None:
        """Called once, by load: the weights must be on the CPU."""
        modules = [self.model.text_encoder, self.model.unet, self.model.vae]
        self.offload = ModelOffload(modules, self.device) if mode == "model" else None
        if mode == "sequential":
            for module in modules:
                offload_sequentially(module, self.device)

    def _activate(self, module: torch.nn.Module) -> None:
        if self.offload is not None:
            self.offload.activate(module)

    def set_attention(self, backend: str) -> None:
        for module in (self.model.unet, self.model.vae, self.model.text_encoder):
            set_attention_backend(module, backend)

    @staticmethod
    def random_seed() -> int:
        return random.randrange(2**32)

    def settings(self, **given: Any) -> dict[str, Any]:
        """The generation settings after defaults, checked: what a PNG's `parameters` records."""
        s = {k: (given[k] if given.get(k) is not None else v) for k, v in self.defaults.items()}
        for side in ("width", "height"):
            if s[side] < 8 or s[side] % 8:
                raise ConfigError(f"{side} must be a positive multiple of 8, got {s[side]}")
        if not math.isfinite(s["guidance"]):
            raise ConfigError(f"guidance must be a finite number, got {s['guidance']}")
        layers = self.model.config.text_encoder.num_hidden_layers
        if not 1 <= s["clip_skip"] <= layers:
            raise ConfigError(f"clip_skip must be between 1 and {layers}, got {s['clip_skip']}")
        samplers.check(s["sampler"], s["steps"], karras=s["karras"], eta=s["eta"])
        return s

    @torch.inference_mode()
    def __call__(
        self,
        prompt: str | list[str],
        *,
        negative_prompt: str | list[str] = "",
        steps: int | None = None,
        guidance: float | None = None,
        sampler: str | None = None,
        karras: bool | None = None,
        seed: int | None = None,
        width: int | None = None,
        height: int | None = None,
        batch_size: int = 1,
        latents: torch.Tensor | None = None,
        clip_skip: int | None = None,
        eta: float | None = None,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        progress: bool = True,
    ) -> list[Image.Image]:
        """Generate images.

        Args:
            prompt: a prompt, or a list of prompts (one batch entry each).
            negative_prompt: what to steer away from (the unconditional side of guidance); one, or one per prompt.
            steps, guidance, sampler, karras, width, height, clip_skip, eta: as in AUTOMATIC1111; None = the
                model's default (SD v1: 50 steps, guidance 7.5, PNDM/plms, 512x512).
            seed: image i of the batch uses seed + i with its own CPU generator, so every image reproduces alone
                (None: a random seed). `pipe.last_seeds` tells which seed made which image.
            batch_size: images per prompt.
            latents: start from these latents (B, 4, H/8, W/8) instead of seeded noise.
            callback: called as callback(step, total_steps, latents) after each step.
            progress: show a tqdm bar on stderr.
        """
        s = self.settings(
            steps=steps, guidance=guidance, sampler=sampler, karras=karras,
            width=width, height=height, clip_skip=clip_skip, eta=eta,
        )  # fmt: skip
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
        if not prompts or len(negatives) != len(prompts):
            raise ConfigError("give one prompt or a list of prompts, and one negative prompt or one per prompt")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        prompts = [p for p in prompts for _ in range(batch_size)]  # prompt-major, as diffusers orders a batch
        negatives = [n for n in negatives for _ in range(batch_size)]
        seed = self.random_seed() if seed is None else seed
        self.last_seeds = [seed + i for i in range(len(prompts))]
        generators = [torch.Generator("cpu").manual_seed(s_) for s_ in self.last_seeds]

        guided = s["guidance"] != 1  # guidance 1 needs no unconditional side
        context = self.encode(prompts + negatives if guided else prompts, s["clip_skip"])  # one encoder batch
        context, uncond = (context[: len(prompts)], context[len(prompts) :]) if guided else (context, None)
        plan = samplers.plan(s["sampler"], s["steps"], karras=s["karras"])
        denoiser = CFGDenoiser(self.model.unet, context, uncond, s["guidance"], plan.timestep,
                               prediction_type=self.model.config.unet.prediction_type)  # fmt: skip
        factor = self.model.config.vae.downscale
        shape = (len(prompts), self.model.config.vae.z_channels, s["height"] // factor, s["width"] // factor)
        if latents is None:
            latents = samplers.initial_noise(shape, generators)  # drawn on the CPU: same image on any device
        elif tuple(latents.shape) != shape:
            raise ConfigError(f"latents must have shape {shape} for this batch and size, not {tuple(latents.shape)}")
        total = len(plan.sigmas) - 1
        self._activate(self.model.unet)
        with tqdm(total=total, disable=not progress, desc="sampling", unit="step", leave=False) as bar:

            def on_step(i: int, n: int, x: torch.Tensor) -> None:
                bar.update(1)
                if callback is not None:
                    callback(i, n, x)

            x = samplers.run(
                plan, denoiser, latents.to(self.device, torch.float32), generators=generators, eta=s["eta"],
                callback=on_step, prediction_type=self.model.config.unet.prediction_type,
            )  # fmt: skip
        if self.device.type == "cpu":
            release_free_memory()  # the U-Net's freed activations, before the VAE's buffers (peak RSS)
        return to_pil(self.decode(x))

    def encode(self, prompts: list[str], clip_skip: int) -> torch.Tensor:
        """(B, T, C) text context; each distinct prompt is encoded once and remembered (ldm/prompt_cache.py)."""

        @torch.no_grad()  # a cached row must not hold an autograd graph
        def run(distinct: list[str]) -> torch.Tensor:
            self._activate(self.model.text_encoder)
            return self.model.text_encoder(self.tokenizer(distinct).to(self.device), clip_skip=clip_skip)

        return self.prompt_cache.encode(self.model.text_encoder, prompts, clip_skip, run)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1], float32; tiled and sliced as set on the pipeline."""
        z = latents / self.model.config.vae.scale_factor
        self._activate(self.model.vae)
        image = self._decode(z.to(self.vae_dtype))
        if not torch.isfinite(image).all() and self.vae_dtype != torch.float32:
            self.model.vae.float()  # float16 overflowed: decode in float32 from now on
            self.vae_dtype = torch.float32
            image = self._decode(z.float())
        return image.float()

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        decode = self.model.vae.decode
        if self.vae_tiling:
            scale = self.model.config.vae.downscale
            decode = partial(tiled_decode, self.model.vae.decode, scale=scale)
        if self.vae_slicing:
            return torch.cat([decode(z[i : i + 1]) for i in range(z.shape[0])])
        return decode(z)


def builtin_defaults() -> dict[str, Any]:
    """Generation defaults suited to the built-in model (stored beside it)."""
    import json

    path = WEIGHTS_DIR / "defaults.json"
    return json.loads(path.read_text()) if path.is_file() else {}
