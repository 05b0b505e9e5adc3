"""What a checkpoint is, from its tensors' names and shapes: the family, and the config that builds it."""

from __future__ import annotations

import torch
from torch import Tensor

from ldm.checkpoints.read import PREFIXES
from ldm.config import ModelConfig, TextEncoderConfig, UNetConfig, VAEConfig
from ldm.errors import CheckpointError

FAMILIES = {4: "sd-v1", 9: "sd-v1-inpaint"}  # U-Net input channels -> family


def detect_family(tensors: dict[str, Tensor]) -> str:
    """'sd-v1' or 'sd-v1-inpaint', or a CheckpointError that names what the file is instead."""
    keys = tensors.keys()

    def has(fragment: str) -> bool:
        return any(fragment in k for k in keys)

    if has("lora_up") or has("lora_down") or has("lora_A") or has("lora_B") or has("lora_unet_"):
        found = "a LoRA (a small add-on to a base model), not a full model"
    elif has("conditioner.embedders") or has("label_emb") or has("add_embedding"):
        found = "an SDXL checkpoint"
    elif has("cond_stage_model.model.") or _uses_linear_projection(tensors) or _context_dim(tensors) == 1024:
        found = "a Stable Diffusion 2.x checkpoint"
    elif not has(PREFIXES["unet"]) and (has("encoder.conv_in") or has("decoder.conv_in")):
        found = "a bare VAE, not a full model"
    elif has("down_blocks.") and not has(PREFIXES["unet"]):
        found = "a single diffusers component file; pass the whole diffusers folder (with model_index.json)"
    elif PREFIXES["unet"] + "input_blocks.0.0.weight" not in tensors:
        found = "not a Stable Diffusion checkpoint (no U-Net weights under model.diffusion_model.)"
    else:
        channels = tensors[PREFIXES["unet"] + "input_blocks.0.0.weight"].shape[1]
        if channels in FAMILIES:
            return FAMILIES[channels]
        found = f"an SD v1 variant with {channels} U-Net input channels (e.g. InstructPix2Pix), which ldm cannot drive"
    raise CheckpointError(f"this is {found}; ldm loads SD v1 and SD v1 inpainting checkpoints")


def _uses_linear_projection(tensors: dict[str, Tensor]) -> bool:
    w = tensors.get(PREFIXES["unet"] + "input_blocks.1.1.proj_in.weight")
    return w is not None and w.ndim == 2  # SD 2.x uses Linear proj_in, v1 a 1x1 conv


def _context_dim(tensors: dict[str, Tensor]) -> int | None:
    w = tensors.get(PREFIXES["unet"] + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight")
    return None if w is None else w.shape[1]


def infer_config(tensors: dict[str, Tensor]) -> ModelConfig:
    """The architecture of an SD v1 file, read off its tensor shapes (head counts are SD v1's: 8 and width/64)."""
    unet = {k[len(PREFIXES["unet"]) :]: v.shape for k, v in tensors.items() if k.startswith(PREFIXES["unet"])}
    vae = {k[len(PREFIXES["vae"]) :]: v.shape for k, v in tensors.items() if k.startswith(PREFIXES["vae"])}
    text = {
        k[len(PREFIXES["text_encoder"]) :]: v.shape
        for k, v in tensors.items()
        if k.startswith(PREFIXES["text_encoder"])
    }
    try:
        return ModelConfig(unet=_infer_unet(unet), vae=_infer_vae(vae), text_encoder=_infer_text_encoder(text))
    except (KeyError, IndexError, ValueError) as e:
        raise CheckpointError(
            f"cannot read the architecture off this checkpoint (missing {e}); pass --config"
        ) from None


def _infer_unet(shapes: dict[str, torch.Size]) -> UNetConfig:
    blocks = {int(k.split(".")[1]) for k in shapes if k.startswith("input_blocks.")}
    downsamples = sorted(int(k.split(".")[1]) for k in shapes if k.startswith("input_blocks.") and ".op." in k)
    per_level = downsamples[0] - 1 if downsamples else max(blocks)
    levels = (max(blocks) + 1) // (per_level + 1)
    first = [1 + level * (per_level + 1) for level in range(levels)]  # first res block of each level
    base = shapes["input_blocks.0.0.weight"][0]
    depth = len({k.split(".")[3] for k in shapes if k.startswith("middle_block.1.transformer_blocks.")})
    return UNetConfig(
        in_channels=shapes["input_blocks.0.0.weight"][1],
        out_channels=shapes["out.2.weight"][0],
        model_channels=base,
        channel_mult=tuple(shapes[f"input_blocks.{i}.0.out_layers.3.weight"][0] // base for i in first),
        num_res_blocks=per_level,
        attention_resolutions=tuple(
            sorted(
                (2**level for level, i in enumerate(first) if f"input_blocks.{i}.1.norm.weight" in shapes), reverse=True
            )
        ),
        transformer_depth=depth,
        context_dim=shapes["middle_block.1.transformer_blocks.0.attn2.to_k.weight"][1],
    )


def _infer_vae(shapes: dict[str, torch.Size]) -> VAEConfig:
    levels = 1 + max(int(k.split(".")[2]) for k in shapes if k.startswith("encoder.down."))
    base = shapes["encoder.conv_in.weight"][0]
    per_level = len({k.split(".")[4] for k in shapes if k.startswith("encoder.down.0.block.")})
    mult = tuple(shapes[f"encoder.down.{i}.block.0.conv2.weight"][0] // base for i in range(levels))
    return VAEConfig(
        in_channels=shapes["encoder.conv_in.weight"][1],
        out_ch=shapes["decoder.conv_out.weight"][0],
        ch=base,
        ch_mult=mult,
        num_res_blocks=per_level,
        z_channels=shapes["post_quant_conv.weight"][0],
    )


def _infer_text_encoder(shapes: dict[str, torch.Size]) -> TextEncoderConfig:
    vocab, width = shapes["text_model.embeddings.token_embedding.weight"]
    return TextEncoderConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=shapes["text_model.encoder.layers.0.mlp.fc1.weight"][0],
        num_hidden_layers=len({k.split(".")[3] for k in shapes if k.startswith("text_model.encoder.layers.")}),
        num_attention_heads=max(1, width // 64),  # CLIP's heads are 64 wide
        max_position_embeddings=shapes["text_model.embeddings.position_embedding.weight"][0],
    )
