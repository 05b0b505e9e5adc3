"""One generation as the worker runs it: n_iter batches of a request (seeds following on, as A1111 and the CLI
count them), stopping between steps on /interrupt (the rest of the job) or /skip (the rest of this batch).

A stopped batch still gives its pictures, decoded from the x0 estimate where sampling stood, as A1111 returns
them (for inpainting, without the kept region pasted back). Saving and encoding happen here too, on the
worker's thread, so the HTTP side only sends bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ldm.generate.img2img import is_inpainting_model
from ldm.generate.pipeline import Pipeline
from ldm.generate.preview import Preview
from ldm.generate.request import GenerationRequest
from ldm.outputs.png import save_png, to_pil
from ldm.serve.limits import Limits
from ldm.serve.options import Options
from ldm.serve.worker import Control, Stopped


@dataclass(frozen=True)
class Made:
    request: GenerationRequest  # the first batch's, with its seed
    seeds: list[int]
    infotexts: list[str]
    images: list[Image.Image]
    model: dict[str, str | None]  # the pipeline's model_info: name and hash
    job_timestamp: str  # when it started, as A1111 writes it
    inpainting_model: bool  # A1111's is_using_inpainting_conditioning


@dataclass(frozen=True)
class GenerationJob:
    settings: dict[str, Any]  # GenerationRequest fields; the rest are the loaded model's defaults
    n_iter: int
    limits: Limits
    options: Options
    image: Image.Image | None = None
    mask: Image.Image | None = None
    save_to: Path | None = None  # save_images: this folder, under A1111's numbered names

    def request_for(self, pipe: Pipeline) -> GenerationRequest:
        request = pipe.request(**{"clip_skip": self.options.clip_skip, "emphasis": self.options.emphasis,
                                  **self.settings})  # fmt: skip
        self.limits.check(request, self.n_iter)
        return request

    def __call__(self, pipe: Pipeline, control: Control) -> Made:
        request = self.request_for(pipe).with_seed()
        started = datetime.now().strftime("%Y%m%d%H%M%S")
        first, seeds, infotexts, images = request, [], [], []
        preview = None
        if self.options.preview != "none":
            preview = Preview(control.progress.show, self.options.preview, self.options.preview_every)
        for number in range(self.n_iter):
            control.batch(number)
            try:
                result = pipe.generate(request, image=self.image, mask=self.mask, callback=control.step,
                                       progress=False, preview=preview)  # fmt: skip
                batch = list(zip(result.images, result.seeds, result.infotexts, strict=True))
            except Stopped as stop:
                if control.cancelled:
                    raise
                batch = self._stopped(pipe, request, stop.denoised)
            for image, seed, infotext in batch:
                if self.save_to is not None:
                    save_png(image, self.save_to, seed, infotext)
                images.append(image)
                seeds.append(seed)
                infotexts.append(infotext)
            if control.interrupted:
                break
            request = request.replace(seed=request.seed + request.batch_size)
        return Made(first, seeds, infotexts, images, dict(pipe.model_info), started, is_inpainting_model(pipe))

    @staticmethod
    def _stopped(pipe: Pipeline, request: GenerationRequest, denoised: torch.Tensor) -> list:
        with torch.inference_mode():
            pictures = to_pil(pipe.decode(denoised, tiling=request.vae_tiling, slicing=request.vae_slicing,
                                          decoder=request.vae_decoder))  # fmt: skip
        return [(p, request.seed + i, request.to_infotext(i, **pipe.model_info)) for i, p in enumerate(pictures)]
