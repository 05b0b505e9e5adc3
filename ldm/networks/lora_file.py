"""A LoRA file read and checked: its tensors grouped by module, each module matched with the weight it edits.

Formats: kohya-ss / A1111 `.safetensors` (or `.pt`) with `<module>.lora_down.weight` / `.lora_up.weight` /
`.alpha` (LoRA, LoCon, `lora_mid`), `.hada_*` (LoHa), `.lokr_*` (LoKr), and diffusers / PEFT files with
`<module>.lora_A.weight` / `.lora_B.weight`. Everything that can be wrong with a file is found here, before any
weight changes: another model family, names that match no layer, NaN or infinity, absurd values, wrong shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ldm.checkpoints.read import load_restricted_pickle, read_safetensors, refuse_broken_values
from ldm.config import ModelConfig
from ldm.errors import CheckpointError, ConfigError
from ldm.networks.lora_deltas import delta_shape
from ldm.networks.lora_targets import Target, kohya_name, targets

EXTENSIONS = (".safetensors", ".pt", ".ckpt")
# Per-module tensor names; PEFT's lora_A / lora_B are kohya's down / up.
SUFFIXES = {"lora_down.weight": "down", "lora_up.weight": "up", "lora_mid.weight": "mid", "lora_A.weight": "down",
            "lora_B.weight": "up", "alpha": "alpha", "scale": "scale", "dora_scale": "dora_scale",
            **{f"hada_{n}": f"hada_{n}" for n in ("w1_a", "w1_b", "w2_a", "w2_b", "t1", "t2")},
            **{f"lokr_{n}": f"lokr_{n}" for n in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t2")}}  # fmt: skip
MAX_ABS = 1e3  # trained LoRA factors stay far below this; a file beyond it is broken (or not a LoRA)


@dataclass(frozen=True)
class LoraModule:
    target: Target
    tensors: dict[str, Tensor]  # "down", "up", "alpha", "hada_w1_a", ... (float32, CPU)


@dataclass(frozen=True)
class LoraFile:
    path: Path
    modules: tuple[LoraModule, ...]


def read_lora(path: Path, config: ModelConfig) -> LoraFile:
    """Read and check `path` against a model of `config`: a CheckpointError / ConfigError says what is wrong."""
    if not path.is_file():
        raise ConfigError(f"LoRA {path} does not exist")
    if path.suffix.lower() == ".safetensors":
        tensors, metadata, _ = read_safetensors(path)
    else:
        data = load_restricted_pickle(path)
        if not isinstance(data, dict) or not all(isinstance(v, Tensor) for v in data.values()):
            raise CheckpointError(f"{path} is not a LoRA file (expected a flat dict of tensors)")
        tensors, metadata = data, {}
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors; it is not a LoRA file")
    _check_family(path, tensors, metadata, config)
    grouped: dict[str, dict[str, Tensor]] = {}
    unknown = []
    for key, tensor in tensors.items():
        module, kind = _split(key)
        if kind is None:
            unknown.append(key)
            continue
        grouped.setdefault(kohya_name(module), {})[kind] = tensor
    table = targets(config)
    unmatched = [name for name in grouped if name not in table] + unknown
    if unmatched:
        listed = ", ".join(unmatched[:3])
        raise ConfigError(
            f"{path} has {len(unmatched)} keys that match no layer of this SD v1 model ({listed}"
            f"{', ...' if len(unmatched) > 3 else ''}); is it a LoRA for another model?"
        )
    modules = []
    for name, parts in grouped.items():
        if "dora_scale" in parts:
            raise ConfigError(f"{path} is a DoRA ({name}.dora_scale); ldm merges LoRA, LoCon, LoHa and LoKr only")
        parts = {k: v.detach().float().cpu() for k, v in parts.items()}
        for kind, t in parts.items():
            refuse_broken_values(t, path, f" ({name}.{kind})", MAX_ABS, "a LoRA")
        target = table[name]
        try:
            shape = delta_shape(parts, name)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        if not _fits(shape, target.shape):
            raise ConfigError(
                f"{path}: {name} makes a change of shape {tuple(shape)} for a weight of shape {tuple(target.shape)}; "
                "it is a LoRA for another model"
            )
        modules.append(LoraModule(target, parts))
    return LoraFile(path, tuple(modules))


def _split(key: str) -> tuple[str, str | None]:
    """`lora_unet_x.lora_down.weight` -> ("lora_unet_x", "down"); PEFT's `.lora_A.default.weight` too."""
    key = key.replace(".default.", ".")
    for suffix, kind in SUFFIXES.items():
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], kind
    return key, None


def _fits(delta: torch.Size, weight: torch.Size) -> bool:
    """A change fits its weight: the same size (a Linear's change may come as a 1x1 conv's, and the other way), or
    a 4-channel conv_in change for a 9-channel inpainting conv_in (zero-padded, as A1111 does)."""
    if delta.numel() == weight.numel() and delta[0] == weight[0]:
        return True
    padded = len(delta) == len(weight) == 4 and delta[1] < weight[1]
    return padded and (delta[0], *delta[2:]) == (weight[0], *weight[2:])


def _check_family(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str], config: ModelConfig) -> None:
    """Name the model family a LoRA is for when it is not SD v1 (from its metadata, key names or widths)."""
    base = metadata.get("ss_base_model_version", "")
    family = None
    if base.startswith("sdxl") or any(k.startswith("lora_te2_") for k in tensors):
        family = "SDXL"
    elif base.startswith("sd_v2") or metadata.get("ss_v2") == "True":
        family = "SD 2.x"
    else:
        context = config.unet.context_dim
        for key, t in tensors.items():
            if "attn2_to_k" in key.replace(".", "_") and key.endswith(("lora_down.weight", "lora_A.weight")):
                if t.shape[-1] != context and t.ndim == 2:
                    family = {1024: "SD 2.x", 2048: "SDXL"}.get(t.shape[-1], f"a model with {t.shape[-1]}-wide text")
                break
    if family is not None:
        raise ConfigError(f"{path} is a LoRA for {family}; this is an SD v1 model")
