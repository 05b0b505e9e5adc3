"""What one request may ask of the server, each a flag of ldm-serve with a default that keeps a server usable."""

from __future__ import annotations

from dataclasses import dataclass

from ldm.errors import ConfigError
from ldm.generate.image_settings import hires, hires_size
from ldm.generate.request import GenerationRequest


@dataclass(frozen=True)
class Limits:
    body_bytes: int = 32 * 2**20  # a request body (JSON with base64 images, or a multipart form)
    pixels: int = 2048 * 2048  # width x height of what is generated (the hires pass's size included)
    steps: int = 150  # A1111's UI maximum
    images: int = 16  # batch_size x n_iter
    prompt_chars: int = 20_000  # each of prompt and negative prompt
    queue: int = 32  # jobs waiting; one more gets 503 with Retry-After
    image_pixels: int = 4096 * 4096  # an uploaded picture, checked before Pillow decodes it

    def check(self, request: GenerationRequest, n_iter: int = 1) -> None:
        """A request over a limit: ConfigError (422) naming the limit and the flag that raises it."""
        sizes = [(request.width, request.height)] + ([hires_size(request)] if hires(request) else [])
        for width, height in sizes:
            if width * height > self.pixels:
                raise ConfigError(f"{width}x{height} is over this server's {self.pixels} pixels (--max-pixels)")
        steps = max(request.steps, request.hires_steps)
        if steps > self.steps:
            raise ConfigError(f"{steps} steps is over this server's {self.steps} (--max-steps)")
        if request.batch_size * n_iter > self.images:
            raise ConfigError(
                f"batch_size x n_iter = {request.batch_size * n_iter} is over the server's {self.images} (--max-images)"
            )
        for text in (*request.prompts, *request.negative_prompts):
            if len(text) > self.prompt_chars:
                raise ConfigError(
                    f"a prompt of {len(text)} characters is over this server's {self.prompt_chars} (--max-prompt-chars)"
                )
