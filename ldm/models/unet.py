"""The SD v1 U-Net: predicts the noise in latents x at timestep t, attending to the text context.

Attribute names are the original `model.diffusion_model.*` keys, so a checkpoint loads without renaming.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldm.config import UNetConfig
from ldm.errors import ConfigError
from ldm.models.attention import attention
from ldm.models.layers import GroupNorm32, SiLU, Upsample


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (B,) timesteps -> (B, dim), cos first as in SD v1."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def repeat_rows(x: Tensor, rows: int) -> Tensor:
    """x stacked to `rows` rows (a multiple of its own): one copy per context of a guided batch."""
    return x if x.shape[0] == rows else x.repeat(rows // x.shape[0], *[1] * (x.dim() - 1))


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int):
        super().__init__()
        # SiLU / nn.Dropout placeholders keep the Sequential indices of the checkpoint (in_layers.2, out_layers.3).
        self.in_layers = nn.Sequential(GroupNorm32(groups, cin), SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, cout))
        self.out_layers = nn.Sequential(
            GroupNorm32(groups, cout), SiLU(), nn.Dropout(0.0), nn.Conv2d(cout, cout, 3, padding=1)
        )
        self.skip_connection = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        # The adds go into the convs' fresh outputs, which no backward needs: no activation-sized allocation.
        h = self.in_layers(x).add_(self.emb_layers(emb)[:, :, None, None])  # (B, C) -> (B, C, 1, 1)
        return self.out_layers(h).add_(self.skip_connection(x))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(0.0))
        self.attention_backend = "sdpa"

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        return self.to_out(attention(q, k, v, self.heads, backend=self.attention_backend))


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: Tensor) -> Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, 4 * dim), nn.Dropout(0.0), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int):
        super().__init__()
        self.attn1 = CrossAttention(dim, dim, heads)  # self-attention
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads)  # attends to the text
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(dim) for _ in range(3))

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        # Residuals added into each sublayer's fresh output (a linear's, which its backward does not need).
        x = self.attn1(self.norm1(x)).add_(x)
        x = repeat_rows(x, context.shape[0])  # the first layer that tells a guided batch's copies apart
        x = self.attn2(self.norm2(x), context).add_(x)
        return self.ff(self.norm3(x)).add_(x)


class SpatialTransformer(nn.Module):
    def __init__(self, channels: int, cfg: UNetConfig):
        super().__init__()
        self.norm = GroupNorm32(cfg.norm_groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(channels, cfg.context_dim, cfg.num_heads) for _ in range(cfg.transformer_depth)
        )
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.proj_in(self.norm(x))
        # Contiguous copies on both sides: the strided views made every residual add and the 1x1 proj_out
        # conv run on mixed layouts (5% of the bfloat16 U-Net at 512x512, 1.6% in float32; same numbers).
        y = y.flatten(2).transpose(1, 2).contiguous()  # (B, C, H, W) -> (B, HW, C)
        for block in self.transformer_blocks:
            y = block(y, context)
        y = y.transpose(1, 2).reshape(-1, c, h, w).contiguous()  # (B, HW, C) -> (B, C, H, W)
        out = self.proj_out(y)
        out.unflatten(0, (-1, b)).add_(x)  # x is one copy of each row when the blocks made copies of them
        return out


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class TimestepEmbedSequential(nn.Sequential):
    """A block whose layers take what they need: the timestep embedding, the text context, or neither."""

    def forward(self, x: Tensor, emb: Tensor, context: Tensor) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb[: x.shape[0]])  # a guided batch's x may still be its one copy (UNetModel)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class UNetModel(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.config = cfg
        ch, g = cfg.model_channels, cfg.norm_groups
        emb_dim = 4 * ch
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))])
        skips = [ch]  # channels of each input block's output, consumed by the output blocks in reverse
        levels = cfg.level_channels()
        for level, cout in enumerate(levels):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, cout, emb_dim, g)]
                ch = cout
                if cfg.has_attention(level):
                    layers.append(SpatialTransformer(ch, cfg))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skips.append(ch)
            if level < len(levels) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skips.append(ch)

        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, ch, emb_dim, g), SpatialTransformer(ch, cfg), ResBlock(ch, ch, emb_dim, g)
        )

        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(levels))):
            cout = levels[level]
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skips.pop(), cout, emb_dim, g)]
                ch = cout
                if cfg.has_attention(level):
                    layers.append(SpatialTransformer(ch, cfg))
                if level > 0 and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(GroupNorm32(g, ch), SiLU(), nn.Conv2d(ch, cfg.out_channels, 3, padding=1))

    def forward(self, x: Tensor, timesteps: Tensor, context: Tensor) -> Tensor:
        """x (B, in, h, w), timesteps (B,), context (B, T, context_dim) -> predicted noise (B, out, h, w).

        A guided batch: context (k B, T, C), k blocks of B rows (CFG: uncond, then cond) -> (k B, out, h, w),
        each x row evaluated with each of its k contexts, as if x and timesteps were repeated k times. The
        layers before the first cross-attention cannot tell those copies apart, so they run once: 3% of a
        512x512 CFG evaluation (its first 4096-token self-attention), and the same numbers.
        """
        if timesteps.numel() == 1:  # one timestep for the whole batch, as diffusers takes it
            timesteps = timesteps.reshape(1).expand(x.shape[0])
        copies, rest = divmod(context.shape[0], x.shape[0]) if x.shape[0] else (0, 0)
        if not copies or rest or timesteps.shape != x.shape[:1]:
            raise ConfigError(f"U-Net batch mismatch: x {tuple(x.shape)}, timesteps {tuple(timesteps.shape)}, "
                              f"context {tuple(context.shape)}; context rows must be a multiple of x rows")  # fmt: skip
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(x.dtype)).repeat(copies, 1)
        hs = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            skip = repeat_rows(hs.pop(), h.shape[0])
            h = block(torch.cat([h, skip], dim=1), emb, context)
        return repeat_rows(self.out(h), context.shape[0])
