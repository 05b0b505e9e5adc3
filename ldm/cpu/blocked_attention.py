"""bfloat16 attention on a CPU as oneDNN matmuls over blocks of scores small enough to stay in the cache.

On a CPU with avx512_bf16 but no AMX, PyTorch's flash-attention kernel computes bfloat16 no faster than float32,
and attention is then the largest part of a bfloat16 U-Net step at 512x512. Its two products are matmuls that
oneDNN runs natively in bfloat16, so here they run as torch.bmm over a block of heads and query rows at a time:
q k^T for the block, its softmax, and the product with v, while the block's scores (SCORES_PER_BLOCK of them) are
still in the cache.
Blocked, the whole score matrix never exists; unblocked, its traffic to memory made the same three calls slower
than the flash kernel. The scores are rounded to bfloat16 before the softmax (a CPU bmm of bfloat16 returns
bfloat16), which adds a little to the error of a bfloat16 U-Net (tools/bench.py's bf16 lines report it).
Float32, a CPU with AMX (whose flash kernel has its own bfloat16 path), a causal mask, and any backend but
`sdpa` go the plain way. Swapped in for ldm.models.unet.CrossAttention by ldm/cpu/swap_in.py: the same children.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ldm.cpu.bf16 import amx, native_bfloat16
from ldm.models.unet import CrossAttention

SCORES_PER_BLOCK = 1 << 21  # 4 MiB of bfloat16 scores: a core's share of the last-level cache, with room for q, v


class BlockedAttention(CrossAttention):
    @classmethod
    def replacing(cls, plain: CrossAttention) -> BlockedAttention:
        return _moved(plain, cls)

    def plain(self) -> CrossAttention:
        return _moved(self, CrossAttention)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if not blocked(x, self.attention_backend):
            return super().forward(x, context)
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        return self.to_out(blocked_attention(q, k, v, self.heads))


def _moved(attention: CrossAttention, kind: type[CrossAttention]) -> CrossAttention:
    """A `kind` attention holding `attention`'s children and settings (no weight is copied)."""
    with torch.device("meta"):
        new = kind(attention.to_q.in_features, attention.to_k.in_features, attention.heads)
    for name, child in attention.named_children():
        setattr(new, name, child)
    new.attention_backend = attention.attention_backend
    return new


def blocked(x: Tensor, backend: str) -> bool:
    """Whether attention on `x` runs blocked: bfloat16 on a CPU with native bfloat16 and no AMX, backend sdpa."""
    return (
        x.dtype == torch.bfloat16 and x.device.type == "cpu" and backend == "sdpa" and native_bfloat16() and not amx()
    )


def blocked_attention(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """softmax(q k^T / sqrt(d)) v, q (B, N, C), k and v (B, M, C) -> (B, N, C), C split into `heads` heads."""
    (b, n, c), m = q.shape, k.shape[1]
    d = c // heads
    # (B * heads, tokens, d), each head's rows contiguous for the matmuls; the scale goes into q's copy.
    qh = torch.empty(b, heads, n, d, dtype=q.dtype, device=q.device)
    torch.mul(q.view(b, n, heads, d).transpose(1, 2), d**-0.5, out=qh)
    qh, kh, vh = (t.reshape(b * heads, -1, d) for t in (qh, *(u.view(b, m, heads, d).transpose(1, 2) for u in (k, v))))
    out = torch.empty_like(qh)
    rows = min(n, max(1, SCORES_PER_BLOCK // m))
    group = max(1, min(b * heads, SCORES_PER_BLOCK // (rows * m)))
    keys = kh.transpose(1, 2)
    for h in range(0, b * heads, group):
        for i in range(0, n, rows):
            scores = torch.bmm(qh[h : h + group, i : i + rows], keys[h : h + group])
            torch.bmm(scores.softmax(dim=-1), vh[h : h + group], out=out[h : h + group, i : i + rows])
    return out.view(b, heads, n, d).transpose(1, 2).reshape(b, n, c)
