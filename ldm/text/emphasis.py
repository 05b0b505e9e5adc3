"""How prompt weights act on the text encoder's output: A1111's `emphasis` option (modules/sd_emphasis.py).

original: each token's vectors times its weight, then the chunk rescaled so its mean is what it was (the default);
no-norm: times the weight only; ignore: the syntax is parsed but every weight is 1; none: no syntax at all, the
prompt is plain text (brackets included).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ldm.errors import ConfigError

MODES = ("original", "no-norm", "ignore", "none")
DEFAULT = "original"
A1111_NAMES = {"original": "Original", "no-norm": "No norm", "ignore": "Ignore", "none": "None"}


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"unknown emphasis {mode!r}; choose one of {', '.join(MODES)}")
    return mode


def from_a1111(name: str) -> str:
    """Our mode for A1111's infotext name ("No norm" -> "no-norm")."""
    for mode, a1111 in A1111_NAMES.items():
        if name.strip().lower() in (a1111.lower(), mode):
            return mode
    raise ConfigError(f"emphasis {name!r} is not one ldm has; it has {', '.join(A1111_NAMES.values())}")


def parses_syntax(mode: str) -> bool:
    return check_mode(mode) != "none"


def uses_weights(mode: str) -> bool:
    return check_mode(mode) in ("original", "no-norm")


def apply_emphasis(z: Tensor, weights: Tensor, mode: str) -> Tensor:
    """z (N, 77, C) of N chunks, weights (N, 77): each chunk weighted on its own (A1111 takes the mean over the
    chunk of one prompt). All-1 weights give z back unchanged, bit for bit."""
    if not uses_weights(mode) or bool((weights == 1).all()):
        return z
    zf = z.float()
    weighted = zf * weights.to(zf.device, torch.float32)[..., None]
    if mode == "original":
        weighted = weighted * (zf.mean(dim=(1, 2)) / weighted.mean(dim=(1, 2)))[:, None, None]
    return weighted.to(z.dtype)
