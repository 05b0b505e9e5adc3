"""ldm: a small latent text-to-image diffusion engine for Stable Diffusion v1 checkpoints."""

__version__ = "0.2.0"

from ldm.generate.pipeline import Pipeline  # noqa: E402
from ldm.generate.request import GenerationRequest  # noqa: E402
from ldm.generate.result import Result  # noqa: E402
from ldm.jobs.many import generate_many  # noqa: E402

load = Pipeline.load

__all__ = ["GenerationRequest", "Pipeline", "Result", "generate_many", "load", "__version__"]
