"""ldm: a small latent text-to-image diffusion engine for Stable Diffusion v1 checkpoints."""

__version__ = "0.1.0"

from ldm.pipeline import Pipeline  # noqa: E402

load = Pipeline.load

__all__ = ["Pipeline", "load", "__version__"]
