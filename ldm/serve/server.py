"""What a running ldm-serve holds: its settings, the models it may load, the options clients set, the worker.

A model is loaded the way the server runs it: its hash taken (A1111's titles and infotexts carry it), prompt
tags confined to the LoRA folder, and the embeddings folder's files loaded (links out of it left out).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ldm.generate.pipeline import Pipeline
from ldm.serve.catalog import Catalog, Checkpoint
from ldm.serve.limits import Limits
from ldm.serve.options import Options
from ldm.serve.worker import Worker

log = logging.getLogger("ldm.serve")


@dataclass(frozen=True)
class Settings:
    device: str | None = None
    dtype: torch.dtype | None = None
    attention: str | None = None
    offload: str | None = None
    quantize: str | None = None
    taesd: Path | None = None
    lora_dir: Path = Path("models/Lora")
    embeddings_dir: Path = Path("embeddings")
    outdir: Path = Path("outputs")  # save_images writes under it, in txt2img-images/ and img2img-images/ (A1111's)
    limits: Limits = field(default_factory=Limits)
    users: dict[str, str] = field(default_factory=dict)  # --api-auth: HTTP Basic user -> password
    api_key: str | None = None  # --api-key: OpenAI's Bearer token
    cors_origins: tuple[str, ...] = ()
    preview: str = "approx"
    preview_every: int = 1


class Server:
    def __init__(self, catalog: Catalog, settings: Settings | None = None):
        self.catalog, self.settings = catalog, settings or Settings()
        first = catalog.first()
        self.options = Options(first.filename, preview=self.settings.preview, preview_every=self.settings.preview_every)
        self.worker = Worker(self.load, first.filename, depth=self.settings.limits.queue)
        self.started = False

    def start(self) -> None:
        """Load the first model and start the worker (once)."""
        if not self.started:
            self.worker.start()
            self.started = True

    def close(self) -> None:
        self.worker.close(timeout=60)

    def load(self, filename: str) -> Pipeline:
        checkpoint = self.catalog.find(filename)
        s = self.settings
        log.info("loading %s", checkpoint.filename)
        pipe = Pipeline.load(checkpoint.path, device=s.device, dtype=s.dtype, attention=s.attention, offload=s.offload,
                             quantize=s.quantize, taesd=s.taesd)  # fmt: skip
        digest = self.catalog.hashed(checkpoint)  # read once, for the titles and the infotexts
        pipe.model_info["model_hash"] = None if digest is None else digest[:10]
        pipe.lora_dir, pipe.lora_dir_confined = s.lora_dir, True
        pipe.embeddings.load_folder(s.embeddings_dir, confined=True)
        return pipe

    def current(self) -> Checkpoint:
        """The model the options name, as listed now (its title carries the hash once it loaded)."""
        return self.catalog.find(self.options.model)
