"""The CLIP ViT-L/14 text transformer that SD v1 conditions on (transformers' CLIPTextModel names)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldm.config import TextEncoderConfig
from ldm.errors import ConfigError
from ldm.models.attention import attention


class CLIPAttention(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        width = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(width, width) for _ in range(3))
        self.out_proj = nn.Linear(width, width)
        self.attention_backend = "sdpa"

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # (B, T, C) each
        return self.out_proj(attention(q, k, v, self.heads, causal=True, backend=self.attention_backend))


class CLIPMLP(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        if cfg.hidden_act not in ("quick_gelu", "gelu"):
            raise ConfigError(f"text encoder activation {cfg.hidden_act!r} is not supported; use quick_gelu or gelu")
        self.quick = cfg.hidden_act == "quick_gelu"
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        x = self.fc1(x)
        x = x * torch.sigmoid(1.702 * x) if self.quick else F.gelu(x)  # OpenAI CLIP's sigmoid approximation of GELU
        return self.fc2(x)


class CLIPEncoderLayer(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = CLIPAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        x = x + self.mlp(self.layer_norm2(x))
        return x


def _embedding(count: int, dim: int) -> nn.Embedding:
    """nn.Embedding (N(0, 1) init), but no init on the meta device: normal_ there imports torch._dynamo, 2 s a load."""
    weight = torch.empty(count, dim)
    if weight.device.type != "meta":
        nn.init.normal_(weight)
    return nn.Embedding(count, dim, _weight=weight)


class CLIPEmbeddings(nn.Module):
    offload_as_unit = True  # reads position_embedding.weight without calling it: offloaded as a whole

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.token_embedding = _embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = _embedding(cfg.max_position_embeddings, cfg.hidden_size)

    def forward(self, ids: Tensor, vectors: Sequence[tuple[int, int, Tensor]] = ()) -> Tensor:
        """`vectors`: (row, position, (n, C)) written over the token embeddings there (textual inversion)."""
        x = self.token_embedding(ids)
        for row, position, v in vectors:
            x[row, position : position + v.shape[0]] = v.to(x.dtype)
        # Positions are always 0..T-1: no position_ids buffer (the original files carry one; it is unused).
        return x + self.position_embedding.weight[: ids.shape[1]]


class CLIPEncoder(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))


class CLIPTextTransformer(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.embeddings = CLIPEmbeddings(cfg)
        self.encoder = CLIPEncoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class TextEncoder(nn.Module):
    """Token ids (B, T) -> the context the U-Net attends to (B, T, hidden)."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.config = cfg
        self.text_model = CLIPTextTransformer(cfg)

    def forward(self, ids: Tensor, clip_skip: int = 1, vectors: Sequence[tuple[int, int, Tensor]] = ()) -> Tensor:
        """clip_skip as AUTOMATIC1111 counts it: 1 = the last layer's output, 2 = the layer before, ...

        The final layer norm is applied in every case, as A1111 and diffusers do. `vectors` (row, position, (n, C))
        replace token embeddings (textual inversion), before the position embeddings are added.
        """
        layers = self.text_model.encoder.layers
        if not 1 <= clip_skip <= len(layers):
            raise ConfigError(f"clip_skip must be between 1 and {len(layers)}, got {clip_skip}")
        x = self.text_model.embeddings(ids, vectors)  # (B, T, C)
        for layer in layers[: len(layers) - clip_skip + 1]:
            x = layer(x)
        return self.text_model.final_layer_norm(x)
