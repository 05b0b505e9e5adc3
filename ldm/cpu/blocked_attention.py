"""CPU attention as oneDNN matmuls over blocks of scores small enough to stay in the cache, where PyTorch's own
flash-attention kernel computes through slower matmuls:
- bfloat16 on a CPU with avx512_bf16 but no AMX: the flash kernel computes it no faster than float32, while
  oneDNN runs both products natively in bfloat16. They run as torch.bmm over a block of heads and query rows.
- float32 where MKL's matmuls are narrower than oneDNN's (ldm/cpu/features.py): the flash kernel's products, and
  torch.bmm's, are MKL's. Each head's two products run as oneDNN matmuls, over blocks of query rows.
For each block: q k^T, its softmax, and the product with v, while the block's scores (SCORE_BYTES of them) are
still in the cache. Blocked, the whole score matrix never exists; unblocked, its traffic to memory made the same
three calls slower than the flash kernel. In bfloat16 the scores are rounded to bfloat16 before the softmax (a
CPU bmm of bfloat16 returns bfloat16), which adds a little to the error of a bfloat16 U-Net (tools/bench.py's bf16
lines report it).
A CPU with AMX (whose flash kernel has its own bfloat16 path), a causal mask, and any backend but `sdpa` go the
plain way. Swapped in for ldm.models.unet.CrossAttention by ldm/cpu/swap_in.py: the same children.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ldm.cpu.features import amx, mkl_narrower_than_onednn, native_bfloat16
from ldm.cpu.moved import moved
from ldm.cpu.packing import packing_available
from ldm.models.unet import CrossAttention

SCORE_BYTES = 4 << 20  # a block's scores: a core's share of the last-level cache, with room for q and v
# float32 runs head by head: below this many scores a head, the calls cost more than the flash kernel's slower matmuls
FLOAT32_SCORES_PER_HEAD = 1 << 18
# bfloat16's softmax over rows this short (the text's 77 tokens) runs faster through float32
SHORT_ROWS = 128


class BlockedAttention(CrossAttention):
    @classmethod
    def replacing(cls, plain: CrossAttention) -> BlockedAttention:
        return moved(plain, cls)

    def plain(self) -> CrossAttention:
        return moved(self, CrossAttention)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        if not blocked(x, context, self.attention_backend):
            return super().forward(x, context)
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        return self.to_out(blocked_attention(q, k, v, self.heads))


def blocked(x: Tensor, context: Tensor, backend: str) -> bool:
    """Whether attention of `x` to `context` runs blocked: on a CPU, backend sdpa, in bfloat16 where it is native
    and there is no AMX, or in float32 where oneDNN's matmuls are wider than MKL's and a head has enough scores."""
    if x.device.type != "cpu" or backend != "sdpa":
        return False
    if x.dtype == torch.bfloat16:
        return native_bfloat16() and not amx()
    return (
        x.dtype == torch.float32
        and x.shape[1] * context.shape[1] >= FLOAT32_SCORES_PER_HEAD
        and mkl_narrower_than_onednn()
        and packing_available()
    )


def blocked_attention(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """softmax(q k^T / sqrt(d)) v, q (B, N, C), k and v (B, M, C) -> (B, N, C), C split into `heads` heads."""
    (b, n, c), m = q.shape, k.shape[1]
    d = c // heads
    # (B * heads, tokens, d), each head's rows contiguous for the matmuls; the scale goes into q's copy.
    qh = torch.empty(b, heads, n, d, dtype=q.dtype, device=q.device)
    torch.mul(q.view(b, n, heads, d).transpose(1, 2), d**-0.5, out=qh)
    # Copies, also where reshape could give a strided view (one row): oneDNN's matmul is slow on strided operands.
    qh, kh = qh.view(b * heads, n, d), k.view(b, m, heads, d).transpose(1, 2).contiguous().view(b * heads, m, d)
    out = torch.empty_like(qh)
    rows = min(n, max(1, SCORE_BYTES // (m * q.element_size())))
    if q.dtype == torch.float32:  # torch.bmm would be MKL's: each head through oneDNN's matmul, x @ w^T
        values_t = v.view(b, m, heads, d).permute(0, 2, 3, 1).contiguous().view(b * heads, d, m)
        for h in range(b * heads):
            for i in range(0, n, rows):
                scores = _times_transposed(qh[h, i : i + rows], kh[h]).softmax(dim=-1)
                out[h, i : i + rows] = _times_transposed(scores, values_t[h])
    else:
        vh = v.view(b, m, heads, d).transpose(1, 2).reshape(b * heads, m, d)
        group, keys = max(1, min(b * heads, SCORE_BYTES // (rows * m * q.element_size()))), kh.transpose(1, 2)
        for h in range(0, b * heads, group):
            for i in range(0, n, rows):
                scores = torch.bmm(qh[h : h + group, i : i + rows], keys[h : h + group])
                torch.bmm(_softmax(scores), vh[h : h + group], out=out[h : h + group, i : i + rows])
    return out.view(b, heads, n, d).transpose(1, 2).reshape(b, n, c)


def _softmax(scores: Tensor) -> Tensor:
    if scores.shape[-1] < SHORT_ROWS:
        return torch.softmax(scores, dim=-1, dtype=torch.float32).to(scores.dtype)
    return scores.softmax(dim=-1)


def _times_transposed(x: Tensor, w: Tensor) -> Tensor:
    """x @ w^T for 2-D x and w, as oneDNN's matmul (a linear layer's op, here with no bias)."""
    return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
