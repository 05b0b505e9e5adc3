"""Shared test utilities (imported as `from helpers import ...`; pytest puts tests/ on sys.path)."""

import dataclasses
import json
import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from ldm.checkpoints.read import PREFIXES, ema_key
from ldm.config import ModelConfig, TextEncoderConfig
from ldm.models.text_encoder import TextEncoder
from ldm.models.unet import UNetModel
from ldm.models.vae import AutoencoderKL

DATA = Path(__file__).parent / "data"
DTYPES = {"F32": torch.float32, "I64": torch.int64, "I32": torch.int32}

TINY_KEYS = {
    "unet": "unet_config (diffusers UNet2DConditionModel kwargs)",
    "vae": "vae_config (diffusers AutoencoderKL kwargs)",
    "text_encoder": "text_encoder_config (transformers CLIPTextConfig kwargs)",
}
BOOKKEEPING = ("architectures", "model_type", "torch_dtype", "transformers_version")


def reference_kwargs(component: str, preset: str) -> dict:
    """The diffusers / transformers kwargs of a preset's component from a source other than ldm's translation:
    the fixture for "tiny", SD v1.5's own config files for "sd-v1" (tests/data/README.md)."""
    if preset == "tiny":
        return dict(json.loads((DATA / "sd_v1_tiny_config.json").read_text())[TINY_KEYS[component]])
    real = json.loads((DATA / "sd_v1_5_configs.json").read_text())[component]
    return {k: v for k, v in real.items() if not k.startswith("_") and k not in BOOKKEEPING}


# Tests that read the process's own mappings or descriptors: Linux's /proc.
needs_proc = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self (Linux)")


def mappings_of(path: Path) -> int:
    """How many of this process's memory mappings are of `path` (/proc/self/maps)."""
    name = str(Path(path).resolve())
    return sum(line.rstrip().endswith(name) for line in Path("/proc/self/maps").read_text().splitlines())


# The tiny preset with a 2-layer text encoder: a whole model in a few MB, for end-to-end tests.
E2E = dataclasses.replace(ModelConfig.preset("tiny"), text_encoder=TextEncoderConfig(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2))  # fmt: skip

# Our sampler -> the diffusers scheduler class (and extra config) built from SD v1.5's scheduler config.
DIFFUSERS_SCHEDULERS = {
    "ddim": ("DDIMScheduler", {}),
    "plms": ("PNDMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm2": ("KDPM2DiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


def rel_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """||ours - ref|| / ||ref||, the parity measure of the engine-core issue."""
    return ((ours.double() - ref.double()).norm() / ref.double().norm()).item()


def random_model(cfg: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Original-layout tensors of a randomly initialised model."""
    torch.manual_seed(seed)
    modules = {
        "unet": UNetModel(cfg.unet),
        "vae": AutoencoderKL(cfg.vae),
        "text_encoder": TextEncoder(cfg.text_encoder),
    }
    return {PREFIXES[c] + k: v.detach() for c, m in modules.items() for k, v in m.state_dict().items()}


def random_checkpoint(manifest: str = "sd_v1_tiny_original_keys.json", dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Random tensors with the exact keys, shapes and integer dtypes of a real original-layout file."""
    generator = torch.Generator().manual_seed(0)
    out = {}
    for key, (shape, kind) in json.loads((DATA / manifest).read_text()).items():
        if kind == "F32":
            out[key] = torch.randn(shape, generator=generator).to(dtype)
        else:
            out[key] = torch.arange(max(1, torch.Size(shape).numel()), dtype=DTYPES[kind]).reshape(shape)
    return out


def assert_loaded_exactly(model, tensors: dict[str, torch.Tensor], dtype=torch.float32, ema: bool = False):
    for component, prefix in PREFIXES.items():
        state = getattr(model, component).state_dict()
        for key, value in state.items():
            source = tensors[ema_key(key)] if ema and component == "unet" else tensors[prefix + key]
            assert value.dtype == dtype and torch.equal(value, source.to(dtype)), key


def lightning_ckpt(tensors, path: Path, **extra):
    torch.save(
        {"epoch": 6, "global_step": 470000, "pytorch-lightning_version": "1.4.2", "state_dict": tensors, **extra}, path
    )


def lowest_free_descriptor() -> int:
    """The number the next open file gets (the lowest free one): a soft limit of this lets no file open."""
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    return fd


@contextmanager
def soft_open_files_limit(soft: int) -> Iterator[tuple[int, int]]:
    """This process's soft limit on open files lowered to `soft` for the block (the hard one kept), then restored;
    yields the lowered (soft, hard) so the block can check nothing changed it."""
    original = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, original[1]))
        yield soft, original[1]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, original)


def single_file_and_folder(folder: Path, seed: int) -> tuple[Path, Path]:
    """A random E2E model written both ways: our single file, and the diffusers folder references load."""
    from ldm.checkpoints.convert import write_diffusers_folder, write_single_file

    tensors = random_model(E2E, seed=seed)
    return write_single_file(tensors, folder / "tiny.safetensors", E2E), write_diffusers_folder(
        tensors, folder / "d", E2E
    )


def ddim_reference(folder: Path):
    """diffusers' StableDiffusionPipeline of a folder, sampling with DDIM."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    return pipe


@contextmanager
def serving(server) -> Iterator[str]:
    """ldm-serve (a ldm.serve.server.Server) on a free port of 127.0.0.1, uvicorn in a thread, at the URL it yields."""
    import socket
    import threading
    import time

    import uvicorn

    from ldm.serve.app import create_app

    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    web = uvicorn.Server(uvicorn.Config(create_app(server), log_level="warning"))
    thread = threading.Thread(target=web.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not web.started:
        assert thread.is_alive() and time.monotonic() < deadline, "ldm-serve did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{listening.getsockname()[1]}"
    finally:
        web.should_exit = True
        thread.join(60)
