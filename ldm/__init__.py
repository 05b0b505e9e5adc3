"""ldm: a small latent text-to-image diffusion engine for Stable Diffusion v1 checkpoints."""

__version__ = "0.1.0"
