"""Attention backends against a float64 reference, and the backend choice logic (tested without CUDA)."""

import math

import pytest
import torch

from ldm.errors import ConfigError
from ldm.models import attention as attn


def reference(q, k, v, heads, causal):
    b, n, c = q.shape
    q, k, v = (t.double().reshape(b, -1, heads, c // heads).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(c // heads)
    if causal:
        scores = scores.masked_fill(torch.ones(n, k.shape[2], dtype=torch.bool).triu(1), float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)


@pytest.mark.parametrize("backend", ["sdpa", "sliced", "math"])
@pytest.mark.parametrize(("n", "m", "heads", "causal"), [(77, 77, 2, True), (70, 70, 3, False), (64, 13, 4, False)])
def test_backends_equal_the_formula(monkeypatch, backend, n, m, heads, causal):
    monkeypatch.setattr(attn, "SLICE_QUERIES", 16)  # several slices and a ragged last one
    q, k, v = torch.randn(2, n, 12 * heads), torch.randn(2, m, 12 * heads), torch.randn(2, m, 12 * heads)
    out = attn.attention(q, k, v, heads, causal=causal, backend=backend)
    expected = reference(q, k, v, heads, causal)
    assert ((out.double() - expected).norm() / expected.norm()).item() <= 1e-5


def test_default_backend_choice():
    assert attn.resolve_backend(None, "cuda", has_xformers=True) == "xformers"
    assert attn.resolve_backend(None, "cuda", has_xformers=False) == "sdpa"
    assert attn.resolve_backend(None, "cpu", has_xformers=True) == "sdpa"
    assert attn.resolve_backend("sliced", "cuda:1", has_xformers=True) == "sliced"
    assert attn.resolve_backend("xformers", "cuda", has_xformers=True) == "xformers"


@pytest.mark.parametrize(
    ("request_", "device", "has", "message"),
    [
        ("xformers", "cpu", True, "needs a CUDA device"),
        ("xformers", "cuda", False, "not installed"),
        ("flash", "cpu", False, "choose one of sdpa, xformers, sliced, math"),
    ],
)
def test_impossible_requests_are_clear_errors(request_, device, has, message):
    with pytest.raises(ConfigError, match=message):
        attn.resolve_backend(request_, device, has_xformers=has)


def test_set_attention_backend_switches_every_layer():
    from ldm.config import ModelConfig
    from ldm.models.unet import UNetModel

    model = UNetModel(ModelConfig.preset("tiny").unet)
    attn.set_attention_backend(model, "sliced")
    backends = {m.attention_backend for m in model.modules() if hasattr(m, "attention_backend")}
    assert backends == {"sliced"}
    with pytest.raises(ConfigError):
        attn.set_attention_backend(model, "nope")
