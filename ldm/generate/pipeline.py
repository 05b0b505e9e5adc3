"""Pipeline: a loaded SD v1 model on a device, and the facade over the generation functions.

`Pipeline.load(path)` reads the model and decides how it runs (device, dtype, offload, CPU modules, attention);
`pipe.generate(request)` makes images (ldm/generate/txt2img.py) and returns a Result; `pipe(prompt, ...)` is
the same with keyword settings, returning the images. Nothing about a call is kept on the pipeline, and calls
from several threads are served one at a time per pipeline (as A1111's queue lock does), each as if alone.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from ldm.checkpoints.build import Model, load_model
from ldm.checkpoints.hashing import model_hash
from ldm.config import ModelConfig
from ldm.cpu.banded import BandedResnetBlock, in_bands
from ldm.cpu.heap import released_after_each, reuse_freed_memory
from ldm.cpu.int8 import QUANTIZE, int8_available, say_unavailable
from ldm.cpu.packing import settle_dtype
from ldm.cpu.swap_in import swap_in, swap_out
from ldm.errors import ConfigError, LdmError
from ldm.generate.request import GenerationRequest
from ldm.generate.result import Result
from ldm.generate.tiny_decoder import attach_taesd, require_taesd, taesd_decode
from ldm.models.attention import resolve_backend, set_attention_backend
from ldm.models.taesd import TAESD
from ldm.networks.hash_fields import FIELDS as NETWORK_FIELDS
from ldm.networks.hash_fields import hash_fields
from ldm.networks.lora_tags import DEFAULT_FOLDER as LORA_FOLDER
from ldm.networks.lora_tags import prompt_loras
from ldm.networks.merged import LoraUse, MergedLoras
from ldm.runtime.offload import MODES, ModelOffload, offload_sequentially
from ldm.runtime.tiling import tiled_decode
from ldm.runtime.weights import Weights, edit_weights
from ldm.sampling.samplers import Callback
from ldm.shipped import shipped
from ldm.text.conditioning import PromptCache
from ldm.text.embeddings import Embedding, Embeddings
from ldm.text.tokenizer import Tokenizer
from ldm.text.weighted import embeddings_used, encode_prompts

if TYPE_CHECKING:
    from ldm.generate.preview import Preview, ShowPreview

WEIGHTS_DIR = shipped("weights")
BUILTIN = WEIGHTS_DIR / "ldm-shapes.safetensors"
COMPONENTS = ("text_encoder", "unet", "vae")


class Pipeline:
    """Text to images with an SD v1 model. `Pipeline.load(path)` then `pipe(prompt, ...)` or `pipe.generate(...)`."""

    def __init__(self, model: Model, *, device: torch.device, dtype: torch.dtype, vae_dtype: torch.dtype):
        self.model = model
        self.tokenizer = Tokenizer(length=model.config.text_encoder.max_position_embeddings)
        self.device, self.dtype, self.vae_dtype = device, dtype, vae_dtype
        self.defaults = GenerationRequest()  # settings a call does not give (the built-in model has its own)
        self.offload: ModelOffload | None = None
        self.sequential_offload = False
        self.prompt_cache = PromptCache()
        self.lock = threading.RLock()  # one generation at a time on this pipeline's device
        self.model_info: dict[str, str | None] = {"model": model.path.stem if model.path else "ldm-builtin"}
        # Prompt control (ldm/text/, ldm/networks/): textual-inversion embeddings, and LoRAs merged into the weights:
        # those load_lora added, plus those a call's prompt tags name (looked up in lora_dir).
        self.embeddings = Embeddings(self.tokenizer, model.config.text_encoder.hidden_size)
        self.loras = MergedLoras(model.config)
        self.lora_uses: tuple[LoraUse, ...] = ()
        self.lora_dir = LORA_FOLDER
        self.lora_dir_confined = False  # True: prompt tags reach only files inside lora_dir (a server's setting)
        self.taesd: TAESD | None = None  # previews and --vae-decoder taesd (ldm/generate/tiny_decoder.py)
        self.preview_taesd: TAESD | None = None  # its bfloat16 copy for previews, on CPUs with native bfloat16
        self.taesd_file: Path | None = None  # a TAESD that loads on first use: the built-in model's

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
        taesd: str | Path | None = None,
        pack: bool = True,
        quantize: str | None = None,
    ) -> Pipeline:
        """Load a single-file checkpoint or a diffusers folder (None: the built-in model).

        Device auto: CUDA when available, running the U-Net and text encoder in float16 (the VAE falls back
        to float32 when float16 overflows); CPU runs float32. `offload` ("model" or "sequential", see
        ldm/runtime/offload.py) keeps the weights in CPU memory and lends them to the device while they compute.
        `compile` runs the U-Net through torch.compile (the first image pays the compilation, minutes on a CPU).
        `taesd`: a TAESD for previews and `vae_decoder="taesd"` (the built-in model has its own).
        `pack=False` keeps a CPU's weights in the file's pages, shared by every process that maps the file.
        `quantize="int8"` (a CPU with VNNI) computes the U-Net's convs and linear layers with 8-bit weights
        (ldm/cpu/int8.py): faster and a quarter of the memory, with a small error; without VNNI, float32.
        Otherwise ldm/cpu/swap_in.py fits the modules for speed; on a CPU without offload their layers also pack
        their weights for oneDNN on first use, unless they share one mapping of a pickle that
        ldm/checkpoints/mapped_pickle.py could not split.
        """
        try:
            device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        except RuntimeError:
            raise ConfigError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
        if device.type not in ("cpu", "cuda"):
            raise ConfigError(f"device {device.type!r} is not supported; use cpu, cuda or cuda:N")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but this PyTorch has no CUDA device; use --device cpu")
        dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        if path is None:
            if not BUILTIN.is_file():
                raise LdmError(
                    "no built-in model in this installation; pass a checkpoint (--checkpoint / Pipeline.load(path))"
                )
            path = BUILTIN
        if isinstance(config, (str, Path)):
            config = ModelConfig.from_json(config)
        if offload is not None and offload not in MODES:
            raise ConfigError(f"unknown offload mode {offload!r}; choose one of {', '.join(MODES)}")
        int8 = _wants_int8(quantize, device, dtype, offload, compile)
        # Packed copies live in CPU memory: not for offload (the CPU copy visits the device). Layers that will pack
        # keep the file's weights as read until they do (settle_dtype): one conversion, at packing.
        pack = pack and device.type == "cpu" and not offload and not compile
        if device.type == "cpu":
            reuse_freed_memory()  # large activations reuse freed heap memory, not fresh pages (ldm/cpu/heap.py)
        model = load_model(path, config=config, dtype=dtype, device="cpu" if offload else device,
                           as_read=COMPONENTS if pack or int8 else ())  # fmt: skip
        # The VAE decoder overflows in float16 on some images; it starts in the model dtype and retries in float32.
        # Offloaded, it stays float32: its CPU copy is the one that visits the device.
        vae_dtype = torch.float32 if offload else dtype
        if offload:
            model.vae.float()
        pipe = cls(model, device=device, dtype=dtype, vae_dtype=vae_dtype)
        if not compile:
            # Nor for weights on one shared mapping of a pickle (packing would keep every file page beside the copies).
            pack = pack and not model.one_mapping
            for name, module in zip(COMPONENTS, pipe.components(), strict=True):
                swap_in(module, pack=pack, int8=int8 and name == "unet")
                settle_dtype(module, dtype)
        pipe._set_offload(offload)
        if compile:
            pipe.compile()
        pipe.set_attention(resolve_backend(attention, device))
        if path == BUILTIN:
            pipe.defaults = GenerationRequest(**builtin_defaults())
        if taesd is not None or path == BUILTIN:
            attach_taesd(pipe, taesd)  # None: the built-in model's, where it ships
        return pipe

    @property
    def source(self) -> Path | None:
        return self.model.path

    def components(self) -> list[torch.nn.Module]:
        return [getattr(self.model, name) for name in COMPONENTS]

    def compile(self) -> None:
        """Compile the U-Net's forward with torch.compile, on the plain modules of ldm/models/."""
        if self.offload is not None or self.sequential_offload:
            raise ConfigError("compile and offload do not combine; choose one")
        swap_out(self.model.unet)  # torch.compile fuses and packs its own way
        self.model.unet.compile(dynamic=False)  # in place: the module, its keys and hooks stay

    def _set_offload(self, mode: str | None) -> None:
        self.offload = ModelOffload(self.components(), self.device) if mode == "model" else None
        self.sequential_offload = mode == "sequential"
        if self.sequential_offload:
            for module in self.components():
                offload_sequentially(module, self.device)

    def activate(self, module: torch.nn.Module) -> None:
        """Bring `module`'s weights to the device before it computes (under model offload)."""
        if self.offload is not None:
            self.offload.activate(module)

    def set_attention(self, backend: str) -> None:
        for module in self.components():
            set_attention_backend(module, backend)

    def hash_model(self) -> str | None:
        """A1111's model hash of the checkpoint file (cached per file), also written into infotexts from now on."""
        self.model_info["model_hash"] = model_hash(self.source)
        return self.model_info["model_hash"]

    @contextmanager
    def edit_weights(self, component: str) -> Iterator[Weights]:
        """`with pipe.edit_weights("unet") as w: w["out.2.weight"].mul_(0.5)`: edit a component's weights in place,
        between generations, in the copy that offload keeps (ldm/runtime/weights.py)."""
        if component not in COMPONENTS:
            raise ConfigError(f"unknown component {component!r}; choose one of {', '.join(COMPONENTS)}")
        with self.lock:
            if self.offload is not None:
                self.offload.send_home()
            with edit_weights(getattr(self.model, component)) as weights:
                yield weights

    def load_embedding(self, path: str | Path, token: str | None = None) -> Embedding:
        """Load a textual-inversion embedding; a prompt uses it by `token`, or by the file's stem (as A1111)."""
        with self.lock:
            return self.embeddings.load(path, token)

    def load_lora(self, path: str | Path, te: float = 1.0, unet: float | None = None) -> None:
        """Merge a LoRA into the weights at multipliers `te` (text encoder) and `unet` (default: te), until
        unload_loras(). A file that cannot be merged raises and leaves the weights as they were."""
        use = LoraUse(Path(path), te, te if unet is None else unet)
        with self.lock:
            self.loras.set((*self.lora_uses, use), self.edit_weights)
            self.lora_uses += (use,)

    def unload_loras(self) -> None:
        """The weights as loaded again (no reload: from the backups of what the LoRAs changed)."""
        with self.lock:
            self.lora_uses = ()
            self.loras.set((), self.edit_weights)

    def _with_networks(self, request: GenerationRequest) -> GenerationRequest:
        """Merge the LoRAs of load_lora and of the prompts' tags; the request notes them, and the embeddings its
        prompts use, in its infotext fields (A1111's Lora hashes, TI hashes)."""
        tagged = prompt_loras(request.prompts, self.lora_dir, confined=self.lora_dir_confined)
        self.loras.set((*self.lora_uses, *tagged), self.edit_weights)
        texts = [*request.prompts, *request.negative_prompts]
        names = embeddings_used(texts, self.tokenizer, request.emphasis, self.embeddings)
        used = [self.embeddings.by_name[n] for n in names]
        fields = hash_fields(self.loras.applied, used, self.loras.short_hash)
        kept = {k: v for k, v in request.extra.items() if k not in NETWORK_FIELDS}
        return dataclasses.replace(request, extra={**kept, **fields})

    def request(self, **given: Any) -> GenerationRequest:
        """A request from keyword settings; those not given (or None) are this pipeline's defaults."""
        if isinstance(given.get("prompt"), list):
            given["prompt"] = tuple(given["prompt"])
        if isinstance(given.get("negative_prompt"), list):
            given["negative_prompt"] = tuple(given["negative_prompt"])
        return self.defaults.replace(**given)

    def generate(
        self,
        request: GenerationRequest,
        *,
        image: Image.Image | None = None,
        mask: Image.Image | None = None,
        latents: torch.Tensor | None = None,
        callback: Callback | None = None,
        progress: bool = True,
        preview: Preview | ShowPreview | None = None,
    ) -> Result:
        """Run `request`: images, their seeds and infotexts, and the final latents.

        image: img2img from it (ldm/generate/img2img.py); with mask, inpaint where the mask is white. latents:
        txt2img from these (B, 4, H/8, W/8) instead of seeded noise. callback(step, total, x, denoised) after each
        step (denoised: the x0 estimate, in the latents' scale); what it returns, if not None, replaces x.
        progress: a tqdm bar on stderr. preview: show(step, total, image) with a picture of image 0's x0 estimate,
        or a Preview saying how and how often (ldm/generate/preview.py; a bare function: "approx" after every
        step). A request with hires_scale or hires_resize adds the hires fix's second pass.
        """
        from ldm.generate.hires import hires_fix
        from ldm.generate.image_settings import hires
        from ldm.generate.img2img import img2img, is_inpainting_model
        from ldm.generate.preview import with_preview
        from ldm.generate.txt2img import txt2img

        if request.vae_decoder == "taesd":
            require_taesd(self, "--vae-decoder taesd")  # before minutes of sampling, not after
        callback = with_preview(self, preview, callback)
        with self.lock:
            request = self._with_networks(request)
            if hires(request) and (image is not None or is_inpainting_model(self)):
                raise ConfigError("the hires fix needs an ordinary model and no init image (it is txt2img's 2nd pass)")
            if image is None and is_inpainting_model(self) and latents is None:
                # A1111's txt2img on an inpainting model: all of a blank picture repainted
                image = Image.new("RGB", (request.width, request.height), (127, 127, 127))
                request = request.replace(strength=1.0)
            if image is not None:
                return img2img(self, request, image, mask, callback=callback, progress=progress)
            if hires(request):
                return hires_fix(self, request, latents=latents, callback=callback, progress=progress)
            return txt2img(self, request, latents=latents, callback=callback, progress=progress)

    def img2img(
        self, image: Image.Image, prompt: str | list[str], *, strength: float = 0.75, **settings: Any
    ) -> list[Image.Image]:
        """Images from `image` and a prompt (diffusers' img2img; settings as `pipe(...)` and GenerationRequest).
        Width and height default to the image's size, floored to multiples of 8."""
        return self._from_image(image, None, prompt, strength, settings).images

    def inpaint(self, image: Image.Image, mask: Image.Image, prompt: str | list[str], *, strength: float = 1.0,
                **settings: Any) -> list[Image.Image]:  # fmt: skip
        """Repaint `image` where `mask` is white (a 9-channel inpainting model, or any model); the rest is kept."""
        return self._from_image(image, mask, prompt, strength, settings).images

    def _from_image(self, image, mask, prompt, strength, settings) -> Result:
        callback, progress = settings.pop("callback", None), settings.pop("progress", True)
        preview = settings.pop("preview", None)
        if settings.get("width") is None and settings.get("height") is None:
            from ldm.generate.image_input import default_size

            settings["width"], settings["height"] = default_size(image)
        request = self.request(prompt=prompt, strength=strength, **settings)
        return self.generate(request, image=image, mask=mask, callback=callback, progress=progress, preview=preview)

    def encode_image(self, pixels: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """(1, 3, H, W) in [-1, 1] -> (len(generators), 4, H/8, W/8) latents, each a sample of the VAE's posterior
        drawn from its own generator (as diffusers encodes an init image), times the scale factor; float32, CPU."""
        self.activate(self.model.vae)
        vae_dtype = self.vae_dtype
        posterior = self.model.vae.encode(pixels.to(self.device, vae_dtype))
        samples = torch.cat([posterior.sample(g) for g in generators])
        return samples.float().cpu() * self.model.config.vae.scale_factor

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
        emphasis: str | None = None,
        vae_decoder: str | None = None,
        callback: Callback | None = None,
        progress: bool = True,
        preview: Preview | ShowPreview | None = None,
    ) -> list[Image.Image]:
        """Generate images; settings as in AUTOMATIC1111 (see GenerationRequest), None = the model's default
        (SD v1: 50 steps, guidance 7.5, PNDM/plms, 512x512). Image i of the batch uses seed + i with its own CPU
        generator, so every image reproduces alone; `pipe.generate` also returns the seeds and infotexts.
        callback and preview: as for `generate`."""
        request = self.request(
            prompt=prompt, negative_prompt=negative_prompt, steps=steps, guidance=guidance, sampler=sampler,
            karras=karras, seed=seed, width=width, height=height, batch_size=batch_size, clip_skip=clip_skip, eta=eta,
            emphasis=emphasis,
            vae_decoder=vae_decoder,
        )  # fmt: skip
        return self.generate(request, latents=latents, callback=callback, progress=progress, preview=preview).images

    def encode(self, prompts: list[str], clip_skip: int, emphasis: str = "original") -> torch.Tensor:
        """(B, T, C) text context of A1111-syntax prompts (T = 77 per chunk; prompts of other chunk counts tiled,
        ldm/text/context_length.py); each distinct prompt is encoded once and remembered (ldm/text/conditioning.py)."""

        @torch.no_grad()  # a cached row must not hold an autograd graph
        def run(distinct: list[str]) -> list[torch.Tensor]:
            self.activate(self.model.text_encoder)
            return encode_prompts(self.model.text_encoder, self.tokenizer, distinct, clip_skip=clip_skip,
                                  emphasis=emphasis, embeddings=self.embeddings, device=self.device)  # fmt: skip

        depends_on = (id(self.embeddings), self.embeddings.revision)
        return self.prompt_cache.encode(self.model.text_encoder, prompts, (clip_skip, emphasis), run, depends_on)

    def decode(
        self, latents: torch.Tensor, *, tiling: bool = False, slicing: bool = False, decoder: str = "full"
    ) -> torch.Tensor:
        """Latents -> images in [-1, 1], float32; in tiles and one image at a time if asked; decoder "taesd": by the
        pipeline's TAESD (fast, approximate; it needs neither tiles nor slices)."""
        if decoder == "taesd":
            return taesd_decode(self, latents)
        z = latents / self.model.config.vae.scale_factor
        self.activate(self.model.vae)
        image = self._decode(z.to(self.vae_dtype), tiling, slicing)
        if self.vae_dtype != torch.float32 and not torch.isfinite(image).all():
            with self.lock:  # float16 overflowed: this VAE decodes in float32 from now on (as diffusers upcasts)
                self.model.vae.float()
                self.vae_dtype = torch.float32
            image = self._decode(z.float(), tiling, slicing)
        return image.float()

    def _decode(self, z: torch.Tensor, tiling: bool, slicing: bool) -> torch.Tensor:
        if self.device.type != "cpu":
            return self._decode_all(z, tiling, slicing)
        with released_after_each(self.model.vae, BandedResnetBlock, when=in_bands):  # the decode is the peak
            return self._decode_all(z, tiling, slicing)

    def _decode_all(self, z: torch.Tensor, tiling: bool, slicing: bool) -> torch.Tensor:
        decode = self.model.vae.decode
        if tiling:
            decode = partial(tiled_decode, self.model.vae.decode, scale=self.model.config.vae.downscale)
        if slicing:
            return torch.cat([decode(z[i : i + 1]) for i in range(z.shape[0])])
        return decode(z)


def _wants_int8(quantize: str | None, device: torch.device, dtype: torch.dtype, offload: str | None,
               compile: bool) -> bool:  # fmt: skip
    """Whether the U-Net gets 8-bit weights: refused where it cannot apply, float32 (said once) where this CPU or
    torch cannot compute it."""
    if quantize is None:
        return False
    if quantize not in QUANTIZE:
        raise ConfigError(f"unknown quantization {quantize!r}; choose one of {', '.join(QUANTIZE)}")
    if device.type != "cpu" or dtype != torch.float32 or offload or compile:
        raise ConfigError("--quantize int8 is for a CPU in float32; leave out --device cuda, --dtype, --offload "
                          "and --compile")  # fmt: skip
    if (reason := int8_available()) is not None:
        say_unavailable(reason)
        return False
    return True


def builtin_defaults() -> dict[str, Any]:
    """Generation defaults suited to the built-in model (stored beside it)."""
    path = WEIGHTS_DIR / "defaults.json"
    return json.loads(path.read_text()) if path.is_file() else {}
