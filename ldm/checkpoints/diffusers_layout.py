"""The diffusers folder layout: its key names and config.json fields, translated to and from ours.

Our modules carry the original CompVis SD v1 names, so single files load without renaming.
Diffusers renamed blocks (`input_blocks.1.0.in_layers.0` is `down_blocks.0.resnets.0.norm1`); this file is
the one table between the two. It is built from a config as a list of (original, diffusers) prefix
pairs; a key is renamed by its longest matching prefix, so the same table runs in both directions.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ldm.config import ModelConfig, TextEncoderConfig, UNetConfig, VAEConfig
from ldm.errors import CheckpointError

Pairs = list[tuple[str, str]]

# Inside a residual block: original Sequential indices -> diffusers names.
UNET_RESNET = [
    ("in_layers.0.", "norm1."),
    ("in_layers.2.", "conv1."),
    ("emb_layers.1.", "time_emb_proj."),
    ("out_layers.0.", "norm2."),
    ("out_layers.3.", "conv2."),
    ("skip_connection.", "conv_shortcut."),
]
VAE_RESNET = [(n, n) for n in ("norm1.", "conv1.", "norm2.", "conv2.")] + [("nin_shortcut.", "conv_shortcut.")]
VAE_ATTENTION = [
    ("norm.", "group_norm."),
    ("q.", "to_q."),
    ("k.", "to_k."),
    ("v.", "to_v."),
    ("proj_out.", "to_out.0."),
]
# Diffusers folders saved before diffusers 0.14 name the VAE attention projections differently.
OLD_VAE_ATTENTION = {"query.": "to_q.", "key.": "to_k.", "value.": "to_v.", "proj_attn.": "to_out.0."}


def _block(original: str, diffusers: str, inner: Pairs) -> Pairs:
    return [(original + a, diffusers + b) for a, b in inner]


def unet_pairs(cfg: UNetConfig) -> Pairs:
    """(original, diffusers) prefixes of every U-Net block, for this config."""
    levels, per_level = len(cfg.channel_mult), cfg.num_res_blocks
    pairs = [
        ("time_embed.0.", "time_embedding.linear_1."),
        ("time_embed.2.", "time_embedding.linear_2."),
        ("input_blocks.0.0.", "conv_in."),
        ("out.0.", "conv_norm_out."),
        ("out.2.", "conv_out."),
        ("middle_block.1.", "mid_block.attentions.0."),
    ]
    pairs += _block("middle_block.0.", "mid_block.resnets.0.", UNET_RESNET)
    pairs += _block("middle_block.2.", "mid_block.resnets.1.", UNET_RESNET)
    for level in range(levels):
        for j in range(per_level):
            index = 1 + level * (per_level + 1) + j
            pairs += _block(f"input_blocks.{index}.0.", f"down_blocks.{level}.resnets.{j}.", UNET_RESNET)
            pairs.append((f"input_blocks.{index}.1.", f"down_blocks.{level}.attentions.{j}."))
        if level < levels - 1:
            index = (level + 1) * (per_level + 1)
            pairs.append((f"input_blocks.{index}.0.op.", f"down_blocks.{level}.downsamplers.0.conv."))
    for up in range(levels):  # diffusers' up_blocks[0] is the deepest level: output_blocks run bottom-up
        for j in range(per_level + 1):
            index = up * (per_level + 1) + j
            pairs += _block(f"output_blocks.{index}.0.", f"up_blocks.{up}.resnets.{j}.", UNET_RESNET)
            pairs.append((f"output_blocks.{index}.1.", f"up_blocks.{up}.attentions.{j}."))
        if up < levels - 1:
            index = up * (per_level + 1) + per_level
            position = 2 if cfg.has_attention(levels - 1 - up) else 1
            pairs.append((f"output_blocks.{index}.{position}.conv.", f"up_blocks.{up}.upsamplers.0.conv."))
    return pairs


def vae_pairs(cfg: VAEConfig) -> Pairs:
    """(original, diffusers) prefixes of every VAE block, for this config."""
    levels = len(cfg.ch_mult)
    pairs = [(n, n) for n in ("quant_conv.", "post_quant_conv.")]
    for side in ("encoder", "decoder"):
        pairs += [(f"{side}.{n}", f"{side}.{n}") for n in ("conv_in.", "conv_out.")]
        pairs.append((f"{side}.norm_out.", f"{side}.conv_norm_out."))
        pairs += _block(f"{side}.mid.block_1.", f"{side}.mid_block.resnets.0.", VAE_RESNET)
        pairs += _block(f"{side}.mid.block_2.", f"{side}.mid_block.resnets.1.", VAE_RESNET)
        pairs += _block(f"{side}.mid.attn_1.", f"{side}.mid_block.attentions.0.", VAE_ATTENTION)
    for level in range(levels):
        for j in range(cfg.num_res_blocks):
            pairs += _block(f"encoder.down.{level}.block.{j}.", f"encoder.down_blocks.{level}.resnets.{j}.", VAE_RESNET)
        if level < levels - 1:
            pairs.append(
                (f"encoder.down.{level}.downsample.conv.", f"encoder.down_blocks.{level}.downsamplers.0.conv.")
            )
    for up in range(levels):  # the decoder's `up` list is indexed by resolution level, diffusers' by order of use
        level = levels - 1 - up
        for j in range(cfg.num_res_blocks + 1):
            pairs += _block(f"decoder.up.{level}.block.{j}.", f"decoder.up_blocks.{up}.resnets.{j}.", VAE_RESNET)
        if level > 0:
            pairs.append((f"decoder.up.{level}.upsample.conv.", f"decoder.up_blocks.{up}.upsamplers.0.conv."))
    return pairs


def rename(key: str, pairs: Pairs) -> str | None:
    """Rename `key` by its longest matching prefix in `pairs` (left to right); None if no prefix matches."""
    best = max((p for p in pairs if key.startswith(p[0])), key=lambda p: len(p[0]), default=None)
    return None if best is None else best[1] + key[len(best[0]) :]


def _is_vae_attention_weight(original_key: str) -> bool:
    # Original VAE attention projections are 1x1 convs [C, C, 1, 1]; diffusers stores them as Linear [C, C].
    return ".mid.attn_1." in original_key and original_key.endswith(
        ("q.weight", "k.weight", "v.weight", "proj_out.weight")
    )


def unet_to_diffusers(state: dict[str, Tensor], cfg: UNetConfig) -> dict[str, Tensor]:
    return _convert(state, unet_pairs(cfg), "U-Net")


def unet_from_diffusers(state: dict[str, Tensor], cfg: UNetConfig) -> dict[str, Tensor]:
    return _convert(state, _swap(unet_pairs(cfg)), "diffusers U-Net")


def vae_to_diffusers(state: dict[str, Tensor], cfg: VAEConfig) -> dict[str, Tensor]:
    out = _convert(state, vae_pairs(cfg), "VAE")
    for key, value in state.items():
        if _is_vae_attention_weight(key):
            out[rename(key, vae_pairs(cfg))] = value.reshape(value.shape[:2])
    return out


def vae_from_diffusers(state: dict[str, Tensor], cfg: VAEConfig) -> dict[str, Tensor]:
    state = {_modern_vae_name(k): v for k, v in state.items()}
    out = _convert(state, _swap(vae_pairs(cfg)), "diffusers VAE")
    return {k: v.reshape(*v.shape, 1, 1) if _is_vae_attention_weight(k) and v.ndim == 2 else v for k, v in out.items()}


def text_encoder_to_diffusers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our text encoder keys are `text_model.*`, as transformers' CLIPTextModel saves them (< 5.6)."""
    return dict(state)


def text_encoder_from_diffusers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Accept both transformers layouts: `text_model.*` and the flattened keys transformers >= 5.6 writes."""
    return {k if k.startswith("text_model.") else "text_model." + k: v for k, v in state.items()}


def _modern_vae_name(key: str) -> str:
    if ".mid_block.attentions.0." not in key:
        return key
    head, _, tail = key.partition(".mid_block.attentions.0.")
    for old, new in OLD_VAE_ATTENTION.items():
        if tail.startswith(old):
            tail = new + tail[len(old) :]
    return f"{head}.mid_block.attentions.0.{tail}"


def _swap(pairs: Pairs) -> Pairs:
    return [(b, a) for a, b in pairs]


def _convert(state: dict[str, Tensor], pairs: Pairs, what: str) -> dict[str, Tensor]:
    out, unknown = {}, []
    for key, value in state.items():
        new = rename(key, pairs)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} {what} key(s) have no place in this architecture (first: {', '.join(unknown[:3])}); "
            "check that the checkpoint is SD v1 and matches its config"
        )
    return out


# ---- config.json of each diffusers component <-> our config ----


def unet_config_to_diffusers(cfg: UNetConfig) -> dict[str, Any]:
    levels = range(len(cfg.channel_mult))
    down = ["CrossAttnDownBlock2D" if cfg.has_attention(i) else "DownBlock2D" for i in levels]
    up = ["CrossAttnUpBlock2D" if cfg.has_attention(i) else "UpBlock2D" for i in reversed(levels)]
    return {
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "down_block_types": down,
        "up_block_types": up,
        "block_out_channels": cfg.level_channels(),
        "layers_per_block": cfg.num_res_blocks,
        "attention_head_dim": cfg.num_heads,  # diffusers' SD v1 configs store the head COUNT under this name
        "cross_attention_dim": cfg.context_dim,
        "transformer_layers_per_block": cfg.transformer_depth,
        "norm_num_groups": cfg.norm_groups,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "use_linear_projection": False,
        "sample_size": 64,
    }


def unet_config_from_diffusers(d: dict[str, Any], prediction_type: str = "epsilon") -> UNetConfig:
    channels = list(d.get("block_out_channels", (320, 640, 1280, 1280)))
    base = channels[0]
    if any(c % base for c in channels):
        raise CheckpointError(f"U-Net block_out_channels {channels} are not multiples of the first; not an SD v1 U-Net")
    down = d.get("down_block_types", ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"])
    heads = d.get("num_attention_heads") or d.get("attention_head_dim", 8)
    if d.get("use_linear_projection") or not isinstance(heads, int) or d.get("addition_embed_type"):
        raise CheckpointError("this diffusers U-Net is not SD v1 (SD 2.x / SDXL layout); ldm loads SD v1")
    depth = d.get("transformer_layers_per_block", 1)
    return UNetConfig(
        in_channels=d.get("in_channels", 4),
        out_channels=d.get("out_channels", 4),
        model_channels=base,
        channel_mult=tuple(c // base for c in channels),
        num_res_blocks=d.get("layers_per_block", 2),
        attention_resolutions=tuple(
            sorted((2**i for i, t in enumerate(down) if t.startswith("CrossAttn")), reverse=True)
        ),
        num_heads=heads,
        transformer_depth=depth if isinstance(depth, int) else depth[0],
        context_dim=d.get("cross_attention_dim", 768),
        norm_groups=d.get("norm_num_groups", 32),
        prediction_type=prediction_type,
    )


def vae_config_to_diffusers(cfg: VAEConfig) -> dict[str, Any]:
    n = len(cfg.ch_mult)
    return {
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_ch,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": [cfg.ch * m for m in cfg.ch_mult],
        "layers_per_block": cfg.num_res_blocks,
        "latent_channels": cfg.z_channels,
        "norm_num_groups": cfg.norm_groups,
        "scaling_factor": cfg.scale_factor,
        "sample_size": 512,
    }


def vae_config_from_diffusers(d: dict[str, Any]) -> VAEConfig:
    channels = list(d.get("block_out_channels", (128, 256, 512, 512)))
    return VAEConfig(
        in_channels=d.get("in_channels", 3),
        out_ch=d.get("out_channels", 3),
        ch=channels[0],
        ch_mult=tuple(c // channels[0] for c in channels),
        num_res_blocks=d.get("layers_per_block", 2),
        z_channels=d.get("latent_channels", 4),
        norm_groups=d.get("norm_num_groups", 32),
        scale_factor=d.get("scaling_factor", 0.18215),
    )


def text_encoder_config_to_diffusers(cfg: TextEncoderConfig) -> dict[str, Any]:
    # SD v1.5's text_encoder/config.json keeps CLIP's legacy token ids (bos 0, eos 2, pad 1).
    return {
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "max_position_embeddings": cfg.max_position_embeddings,
        "hidden_act": cfg.hidden_act,
        "layer_norm_eps": cfg.layer_norm_eps,
        "projection_dim": cfg.hidden_size,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
    }


def text_encoder_config_from_diffusers(d: dict[str, Any]) -> TextEncoderConfig:
    defaults = TextEncoderConfig()
    return TextEncoderConfig(**{k: d.get(k, getattr(defaults, k)) for k in TextEncoderConfig.__dataclass_fields__})


def model_config_to_diffusers(cfg: ModelConfig) -> dict[str, dict[str, Any]]:
    return {
        "unet": unet_config_to_diffusers(cfg.unet),
        "vae": vae_config_to_diffusers(cfg.vae),
        "text_encoder": text_encoder_config_to_diffusers(cfg.text_encoder),
    }
