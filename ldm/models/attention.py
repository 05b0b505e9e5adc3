"""One attention entry point for every model, with interchangeable backends.

Backends compute the same softmax(q k^T / sqrt(d)) v:
- `sdpa`: torch.nn.functional.scaled_dot_product_attention (flash / memory-efficient kernels where available).
- `xformers`: xformers.ops.memory_efficient_attention (CUDA only, when installed).
- `sliced`: the math, a chunk of queries at a time, so memory stays bounded for large images.
- `math`: the plain formula with a float32 softmax; the reference the others are tested against.
"""

from __future__ import annotations

import importlib.util
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldm.errors import ConfigError

BACKENDS = ("sdpa", "xformers", "sliced", "math")
SLICE_QUERIES = 1024  # queries per chunk for `sliced`: 8 heads x 1024 x 4096 keys is 128 MiB in float32


def xformers_available() -> bool:
    return importlib.util.find_spec("xformers") is not None


def resolve_backend(requested: str | None, device: torch.device | str, has_xformers: bool | None = None) -> str:
    """The backend to use on `device`: the requested one if it can run there, else a clear error.

    With no request: xformers on CUDA when installed, SDPA otherwise.
    """
    device = torch.device(device)
    has_xformers = xformers_available() if has_xformers is None else has_xformers
    if requested is None:
        return "xformers" if device.type == "cuda" and has_xformers else "sdpa"
    if requested not in BACKENDS:
        raise ConfigError(f"unknown attention backend {requested!r}; choose one of {', '.join(BACKENDS)}")
    if requested == "xformers":
        if device.type != "cuda":
            raise ConfigError(f"attention 'xformers' needs a CUDA device, not {device.type}; use 'sdpa' instead")
        if not has_xformers:
            raise ConfigError("attention 'xformers' is not installed; `pip install ldm[xformers]` or use 'sdpa'")
    return requested


def attention(q: Tensor, k: Tensor, v: Tensor, heads: int, *, causal: bool = False, backend: str = "sdpa") -> Tensor:
    """Multi-head attention: q (B, N, C), k and v (B, M, C) -> (B, N, C), C split into `heads` heads."""
    b, n, c = q.shape
    d = c // heads
    if backend == "xformers":
        import xformers.ops as xops  # optional, CUDA only; imported here so ldm never needs it

        bias = xops.LowerTriangularMask() if causal else None
        split = [t.reshape(b, -1, heads, d) for t in (q, k, v)]  # (B, N, H, D): xformers' layout
        return xops.memory_efficient_attention(*split, attn_bias=bias).reshape(b, n, c)
    q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))  # (B, H, N, D)
    if backend == "sdpa":
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    elif backend == "math":
        out = _math_attention(q, k, v, causal)
    elif backend == "sliced":
        out = torch.cat(
            [_math_attention(q[:, :, i : i + SLICE_QUERIES], k, v, causal, i) for i in range(0, n, SLICE_QUERIES)],
            dim=2,
        )
    else:
        raise ConfigError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return out.transpose(1, 2).reshape(b, n, c)


def _math_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool, offset: int = 0) -> Tensor:
    scores = (q @ k.transpose(-1, -2)).float() * (1 / math.sqrt(q.shape[-1]))  # (B, H, N, M)
    if causal:  # query i (at absolute position offset + i) sees keys 0..offset + i
        rows = torch.arange(q.shape[2], device=q.device)[:, None] + offset
        scores = scores.masked_fill(torch.arange(k.shape[2], device=q.device)[None, :] > rows, float("-inf"))
    return scores.softmax(dim=-1).to(v.dtype) @ v


def set_attention_backend(model: nn.Module, backend: str) -> None:
    """Switch every attention layer inside `model` (each has an `attention_backend` attribute)."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    for module in model.modules():
        if hasattr(module, "attention_backend"):
            module.attention_backend = backend
