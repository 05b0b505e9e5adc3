"""A swap-in takes over a module (ldm/cpu/moved.py): the same tensors under another class, nothing shared that a
later change to one would reach the other through."""

import torch
from torch import nn

from ldm.cpu.blocked_attention import BlockedAttention
from ldm.cpu.moved import moved
from ldm.models.unet import CrossAttention


def test_the_same_tensors_and_settings_under_the_new_class_with_dicts_of_its_own(monkeypatch):
    plain = CrossAttention(16, 8, 2)
    plain.attention_backend = "math"
    plain.register_forward_hook(lambda *a: None)
    monkeypatch.setattr(CrossAttention, "__init__", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    faster = moved(plain, BlockedAttention)
    assert type(faster) is BlockedAttention and faster.heads == 2 and faster.attention_backend == "math"
    assert all(a is b for a, b in zip(faster.state_dict(keep_vars=True).values(),
                                      plain.state_dict(keep_vars=True).values(), strict=True))  # fmt: skip
    faster.to_q = nn.Identity()
    faster.register_buffer("extra", torch.zeros(1))
    faster._forward_hooks.clear()
    assert type(plain.to_q) is nn.Linear and "extra" not in dict(plain.named_buffers()) and plain._forward_hooks
