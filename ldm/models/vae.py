"""AutoencoderKL of SD v1: images <-> latents (module names are CompVis's `first_stage_model.*`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldm.config import VAEConfig
from ldm.models.attention import attention
from ldm.models.layers import GroupNorm32, Upsample, silu_


def normalize(channels: int, groups: int) -> nn.GroupNorm:
    return GroupNorm32(groups, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1 = normalize(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = normalize(cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(silu_(self.norm1(x)))
        h = self.conv2(silu_(self.norm2(h)))
        return h.add_(self.nin_shortcut(x))  # in place: one 512x512 activation fewer alive (peak RSS)


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions; q/k/v/proj_out are 1x1 convs in the original file."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = normalize(channels, groups)
        self.q, self.k, self.v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(channels, channels, 1)
        self.attention_backend = "sdpa"

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (p(n).flatten(2).transpose(1, 2) for p in (self.q, self.k, self.v))  # (B, C, H, W) -> (B, HW, C)
        out = attention(q, k, v, 1, backend=self.attention_backend)
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # CompVis pads right/bottom only, then a valid stride-2 conv


class Level(nn.Module):
    """One resolution of the encoder or decoder: res blocks, then an optional resampler."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.block = nn.ModuleList(blocks)


class Mid(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        channels = [cfg.ch * m for m in cfg.ch_mult]
        g = cfg.norm_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin = cfg.ch
        for i, cout in enumerate(channels):
            level = Level([ResnetBlock(cin if j == 0 else cout, cout, g) for j in range(cfg.num_res_blocks)])
            if i < len(channels) - 1:
                level.downsample = Downsample(cout)
            self.down.append(level)
            cin = cout
        self.mid = Mid(cin, g)
        self.norm_out = normalize(cin, g)
        self.conv_out = nn.Conv2d(cin, 2 * cfg.z_channels, 3, padding=1)  # mean and log-variance

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(silu_(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        channels = [cfg.ch * m for m in cfg.ch_mult]
        g = cfg.norm_groups
        cin = channels[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, padding=1)
        self.mid = Mid(cin, g)
        # `up[i]` is resolution level i (as in the checkpoint), built and run from the deepest level up.
        levels: list[Level] = []
        for i in reversed(range(len(channels))):
            cout = channels[i]
            level = Level([ResnetBlock(cin if j == 0 else cout, cout, g) for j in range(cfg.num_res_blocks + 1)])
            if i > 0:
                level.upsample = Upsample(cout)
            levels.insert(0, level)
            cin = cout
        self.up = nn.ModuleList(levels)
        self.norm_out = normalize(cin, g)
        self.conv_out = nn.Conv2d(cin, cfg.out_ch, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(silu_(self.norm_out(h)))


class DiagonalGaussian:
    """The encoder's latent distribution: N(mean, exp(logvar))."""

    def __init__(self, moments: Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        # Drawn on the generator's device, then moved: a CPU generator gives the same latents on any device.
        device = generator.device if generator is not None else self.mean.device
        noise = torch.randn(self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype)
        return self.mean + self.std * noise.to(self.mean.device)

    def mode(self) -> Tensor:
        return self.mean


class AutoencoderKL(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.z_channels, 1)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 1)

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """Images (B, 3, H, W) in [-1, 1] -> latent distribution over (B, z, H/f, W/f), before the scale factor."""
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z: Tensor) -> Tensor:
        """Latents (B, z, h, w), already divided by the scale factor -> images in about [-1, 1]."""
        return self.decoder(self.post_quant_conv(z))
