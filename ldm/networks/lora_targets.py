"""Which weight of an SD v1 model a LoRA module name means.

kohya-ss names a module by its path with "." made "_", under `lora_unet_` (the U-Net, in diffusers' block names
or, in some files, the original CompVis ones) or `lora_te_` (the text encoder, transformers' names). diffusers /
PEFT files name it with dots under `unet.` / `text_encoder.`. Both are turned into the kohya form, and every
form is looked up in one table built from the model's config: our (CompVis) names, and diffusers' names through
the one diffusers table (ldm/checkpoints/diffusers_layout.py), so no block arithmetic is repeated here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from ldm.checkpoints.diffusers_layout import rename, unet_pairs
from ldm.config import ModelConfig
from ldm.models.text_encoder import TextEncoder
from ldm.models.unet import UNetModel

PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te_"}
TEXT_PREFIXES = ("lora_te_", "lora_te1_")  # diffusers' kohya writer names SD v1's text encoder as SDXL's first
PEFT_PREFIXES = {"unet.": "lora_unet_", "text_encoder.": "lora_te_"}


@dataclass(frozen=True)
class Target:
    component: str  # "unet" or "text_encoder"
    weight: str  # its state-dict name in that component, e.g. "input_blocks.1.1.proj_in.weight"
    shape: torch.Size


def kohya_name(module: str) -> str:
    """`unet.down_blocks.0.attentions.0.proj_in` (diffusers / PEFT) -> `lora_unet_down_blocks_0_attentions_0_proj_in`;
    a kohya name is already one."""
    for prefix, kohya in PEFT_PREFIXES.items():
        if module.startswith(prefix):
            return kohya + module[len(prefix) :].replace(".", "_")
    return module


@lru_cache(maxsize=4)
def targets(config: ModelConfig) -> dict[str, Target]:
    """kohya module name -> the weight it edits, for every Linear and Conv2d weight of the U-Net and text encoder."""
    with torch.device("meta"):  # names and shapes only
        modules = {"unet": UNetModel(config.unet), "text_encoder": TextEncoder(config.text_encoder)}
    pairs = unet_pairs(config.unet)
    table: dict[str, Target] = {}
    for component, module in modules.items():
        for name, weight in module.state_dict().items():
            if not name.endswith(".weight") or weight.ndim not in (2, 4):
                continue  # norms, embeddings and biases: not LoRA targets
            target = Target(component, name, weight.shape)
            owner = name.removesuffix(".weight")
            if component == "unet":
                names = [owner, (rename(name, pairs) or name).removesuffix(".weight")]
                table.update((PREFIXES["unet"] + n.replace(".", "_"), target) for n in names)
                continue
            names = [owner, owner.removeprefix("text_model.")]  # files from transformers >= 5.6 lack that level
            table.update((prefix + n.replace(".", "_"), target) for prefix in TEXT_PREFIXES for n in names)
    return table
