"""TAESD: madebyollin's tiny autoencoder, a fast stand-in for the VAE (previews, quick final images).

Plain 3x3 convs and ReLUs, no norms, no attention. Its latents are SD's *scaled* latents (what the U-Net sees,
the VAE's sample times its scale factor), so it needs no scale factor of its own. Module names are the original
`taesd_encoder` / `taesd_decoder` files' keys: each half is a bare nn.Sequential, and the decoder's index 0 is the
weightless clamp (diffusers' AutoencoderTiny moves it into forward, shifting its decoder keys down by one).
Images are in [-1, 1] at this module's edges, as for AutoencoderKL; inside, TAESD works in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ldm.config import VAEConfig
from ldm.errors import ConfigError


@dataclass(frozen=True)
class TAESDConfig:
    """SD v1's TAESD by default. One width throughout (the original's); a level halves or doubles the size."""

    channels: int = 64
    encoder_blocks: tuple[int, ...] = (1, 3, 3, 3)  # Blocks at each level, the first at full resolution
    decoder_blocks: tuple[int, ...] = (3, 3, 3, 1)  # Blocks at each level, the last at full resolution
    latent_channels: int = 4

    def __post_init__(self) -> None:
        if len(self.encoder_blocks) != len(self.decoder_blocks):
            raise ConfigError("a TAESD's encoder and decoder need the same number of levels")

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.encoder_blocks) - 1)

    def fits(self, vae: VAEConfig) -> str | None:
        """Why this TAESD cannot stand in for `vae`, or None when it can."""
        if self.latent_channels != vae.z_channels:
            return f"it has {self.latent_channels} latent channels and the model's VAE {vae.z_channels}"
        if self.downscale != vae.downscale:
            return f"it scales images by 1/{self.downscale} and the model's VAE by 1/{vae.downscale}"
        return None


def conv(cin: int, cout: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    """Soft clamp of the latents to about [-3, 3] (tanh, so it keeps gradients)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    """Three convs with a residual; the skip is a 1x1 conv only where the width changes (never in SD v1's)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Sequential(conv(cin, cout), nn.ReLU(), conv(cout, cout), nn.ReLU(), conv(cout, cout))
        self.skip = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


def build_encoder(cfg: TAESDConfig) -> nn.Sequential:
    """conv_in, Blocks; then per lower level a stride-2 conv (no bias) and its Blocks; then conv_out to latents."""
    c = cfg.channels
    layers: list[nn.Module] = [conv(3, c)]
    for level, blocks in enumerate(cfg.encoder_blocks):
        if level > 0:
            layers.append(conv(c, c, stride=2, bias=False))
        layers += [Block(c, c) for _ in range(blocks)]
    return nn.Sequential(*layers, conv(c, cfg.latent_channels))


def build_decoder(cfg: TAESDConfig) -> nn.Sequential:
    """Clamp, conv_in, ReLU; then per level its Blocks and, except at the last, a 2x upsample and a conv (no bias)."""
    c = cfg.channels
    layers: list[nn.Module] = [Clamp(), conv(cfg.latent_channels, c), nn.ReLU()]
    for level, blocks in enumerate(cfg.decoder_blocks):
        layers += [Block(c, c) for _ in range(blocks)]
        if level < len(cfg.decoder_blocks) - 1:
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), conv(c, c, bias=False)]
    return nn.Sequential(*layers, conv(c, 3))


class TAESD(nn.Module):
    """Either half may be missing (a decoder-only file is the common case); using it says which file to add."""

    def __init__(self, cfg: TAESDConfig, *, encoder: bool = True, decoder: bool = True):
        super().__init__()
        self.config = cfg
        self.encoder = build_encoder(cfg) if encoder else None
        self.decoder = build_decoder(cfg) if decoder else None

    def encode(self, x: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> scaled latents (B, 4, H/f, W/f)."""
        if self.encoder is None:
            raise ConfigError("this TAESD has no encoder (a taesd_decoder file only); load its taesd_encoder too")
        return self.encoder(x.add(1).div(2))

    def decode(self, z: Tensor) -> Tensor:
        """Scaled latents (B, 4, h, w) -> images in about [-1, 1]."""
        if self.decoder is None:
            raise ConfigError("this TAESD has no decoder (a taesd_encoder file only); load its taesd_decoder too")
        return self.decoder(z).mul(2).sub(1)
