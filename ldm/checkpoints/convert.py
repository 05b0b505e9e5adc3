"""Write checkpoints: an SD v1 single .safetensors file, or a diffusers folder that diffusers loads.

Both writers take original-layout tensors (what `checkpoint.read_checkpoint` returns), so every
conversion is read -> optional EMA / prune / fp16 -> write. Files are written under a temporary name
in the destination's folder and renamed into place; an existing destination is never replaced
unless `force` is given.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor

from ldm.checkpoints import diffusers_layout as layout
from ldm.checkpoints.build import split_components
from ldm.checkpoints.detect import detect_family, infer_config
from ldm.checkpoints.read import CONFIG_METADATA_KEY, EMA_PREFIX, PREFIXES, Checkpoint
from ldm.config import ModelConfig
from ldm.errors import CheckpointError
from ldm.outputs.files import new_file, new_folder
from ldm.text.tokenizer import Tokenizer

# SD v1.5's scheduler/scheduler_config.json: what diffusers builds its default sampler from.
SD_V1_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}


def prepare(checkpoint: Checkpoint, *, ema: bool = False, prune: bool = False, half: bool = False) -> dict[str, Tensor]:
    """The tensors to write: EMA weights swapped in, unused keys dropped, floats halved, as asked."""
    detect_family(checkpoint.tensors)  # refuse SDXL, LoRA, ... before writing anything
    tensors = dict(checkpoint.tensors)
    if ema or prune:
        parts, _ = split_components(tensors, ema=ema)
        tensors = {PREFIXES[c] + k: v for c, state in parts.items() for k, v in state.items()}
    if half:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    return tensors


def model_config(checkpoint: Checkpoint, override: ModelConfig | None = None) -> ModelConfig:
    return override or checkpoint.config or infer_config(checkpoint.tensors)


def write_single_file(tensors: dict[str, Tensor], dst: Path, config: ModelConfig, *, force: bool = False) -> Path:
    """One .safetensors in the original layout, its ModelConfig in the metadata."""
    _refuse_overwrite(dst, force)
    metadata = {"format": "pt", CONFIG_METADATA_KEY: json.dumps(config.to_dict())}
    contiguous = {k: v.contiguous() for k, v in tensors.items()}
    _atomic_file(dst, lambda tmp: save_file(contiguous, str(tmp), metadata=metadata))
    return dst


def write_diffusers_folder(tensors: dict[str, Tensor], dst: Path, config: ModelConfig, *, force: bool = False) -> Path:
    """A diffusers StableDiffusionPipeline folder: model_index.json, unet, vae, text_encoder, tokenizer, scheduler."""
    _refuse_overwrite(dst, force)
    parts, _ = split_components(tensors)
    weights = {
        "unet": layout.unet_to_diffusers(parts["unet"], config.unet),
        "vae": layout.vae_to_diffusers(parts["vae"], config.vae),
        "text_encoder": layout.text_encoder_to_diffusers(parts["text_encoder"]),
    }
    configs = layout.model_config_to_diffusers(config)
    classes = {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL"}
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_folder(dst.parent, f".{dst.name}.")
    try:
        index = {
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": "0.42.1",
            "feature_extractor": [None, None],
            "safety_checker": [None, None],
            "requires_safety_checker": False,
            "scheduler": ["diffusers", "PNDMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }
        _write_json(tmp / "model_index.json", index)
        scheduler = {**SD_V1_SCHEDULER, "prediction_type": config.unet.prediction_type}
        _write_json(tmp / "scheduler" / "scheduler_config.json", scheduler)
        for name in ("unet", "vae"):
            _write_json(tmp / name / "config.json", {"_class_name": classes[name], **configs[name]})
            _save(weights[name], tmp / name / "diffusion_pytorch_model.safetensors")
        _write_json(tmp / "text_encoder" / "config.json", configs["text_encoder"])
        _save(weights["text_encoder"], tmp / "text_encoder" / "model.safetensors")
        Tokenizer().save_pretrained(tmp / "tokenizer")
        if dst.exists():  # only reached with force
            shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
        tmp.rename(dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def ema_available(checkpoint: Checkpoint) -> bool:
    return any(
        k.startswith(EMA_PREFIX) and k not in ("model_ema.decay", "model_ema.num_updates") for k in checkpoint.tensors
    )


def _save(tensors: dict[str, Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _refuse_overwrite(dst: Path, force: bool) -> None:
    if dst.exists() and not force:
        raise CheckpointError(f"{dst} already exists; choose another name or pass --force to replace it")


def _atomic_file(dst: Path, write: Callable[[Path], None]) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = new_file(dst.parent, f".{dst.name}.")
    mode = os.fstat(fd).st_mode & 0o777  # what the umask gave a new file here
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode)  # safetensors writes a file of its own (0600) and renames it over ours
        if dst.is_dir():  # only reached with force: a folder is being replaced by a file
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def describe(tensors: dict[str, Tensor]) -> str:
    """'1130 tensors, 2.13 GB, float16' for the converter's report."""
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values() if t.is_floating_point()})
    return f"{len(tensors)} tensors, {size / 1e9:.2f} GB, {'/'.join(dtypes) or 'no floats'}"
