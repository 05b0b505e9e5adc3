"""CPU attention in blocks of scores (ldm/cpu/blocked_attention.py): the formula, block by block in both of its
paths (float32 through oneDNN's matmul, bfloat16 through torch.bmm), and where it applies."""

import pytest
import torch
from helpers import rel_error
from test_attention import reference

from ldm.cpu import blocked_attention as blocked
from ldm.cpu.blocked_attention import BlockedAttention, blocked_attention
from ldm.cpu.swap_in import swap_in, swap_out
from ldm.models.attention import attention
from ldm.models.unet import CrossAttention


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize(("n", "m", "heads", "block"), [(70, 70, 3, 64 * 70), (64, 13, 4, 20 * 13), (9, 77, 2, 1)])
def test_blocks_of_heads_and_rows_give_the_formula(monkeypatch, n, m, heads, block, dtype, tolerance):
    """Several heads at once (bfloat16), ragged row blocks, one score a block; a lost row or head is an error of 1."""
    torch.manual_seed(0)
    monkeypatch.setattr(blocked, "SCORE_BYTES", block * dtype.itemsize)
    q, k, v = torch.randn(2, n, 12 * heads), torch.randn(2, m, 12 * heads), torch.randn(2, m, 12 * heads)
    expected = reference(q, k, v, heads, causal=False)
    ours = blocked_attention(*(t.to(dtype) for t in (q, k, v)), heads)
    assert ours.dtype == dtype and rel_error(ours.double(), expected) <= tolerance


def test_in_bfloat16_its_error_is_of_the_order_of_sdpas():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 1024, 320) for _ in range(3))
    expected = reference(q, k, v, 8, causal=False)
    ours = rel_error(blocked_attention(*(t.bfloat16() for t in (q, k, v)), 8).double(), expected)
    sdpa = rel_error(attention(*(t.bfloat16() for t in (q, k, v)), 8).double(), expected)
    assert ours <= 2 * sdpa and ours < 1e-2


def test_it_swaps_in_for_the_u_nets_attention_with_the_same_keys_and_only_runs_where_it_pays(monkeypatch):
    torch.manual_seed(0)
    plain = torch.nn.Sequential(CrossAttention(32, 16, 4)).eval()
    state = {k: v.clone() for k, v in plain.state_dict().items()}
    model = swap_in(torch.nn.Sequential(CrossAttention(32, 16, 4)), pack=False)
    model.load_state_dict(state)
    assert type(model[0]) is BlockedAttention and list(model.state_dict()) == list(state)
    x, context = torch.randn(2, 24, 32).bfloat16(), torch.randn(2, 5, 16).bfloat16()
    calls = []
    monkeypatch.setattr(blocked, "blocked_attention", lambda *a: calls.append(a[0].shape) or attention(*a))
    monkeypatch.setattr(blocked, "native_bfloat16", lambda: True)
    monkeypatch.setattr(blocked, "amx", lambda: False)
    monkeypatch.setattr(blocked, "mkl_narrower_than_onednn", lambda: False)
    with torch.no_grad():
        model.bfloat16()[0](x, context)
        model.float()[0](x.float(), context.float())  # float32 where MKL is as wide: the flash kernel
        monkeypatch.setattr(blocked, "mkl_narrower_than_onednn", lambda: True)
        model[0](x.float(), context.float())  # float32 where it is not, but too few scores a head for the calls
        monkeypatch.setattr(blocked, "FLOAT32_SCORES_PER_HEAD", 24 * 5)
        model[0](x.float(), context.float())  # enough of them
        model[0].attention_backend = "math"
        model.bfloat16()[0](x, context)  # a backend asked for by name
        model[0].attention_backend = "sdpa"
        monkeypatch.setattr(blocked, "amx", lambda: True)
        model[0](x, context)  # AMX: PyTorch's own bfloat16 kernel
    assert calls == [(2, 24, 32), (2, 24, 32)]
    monkeypatch.setattr(blocked, "blocked_attention", blocked_attention)
    monkeypatch.setattr(blocked, "amx", lambda: False)
    with torch.no_grad():
        expected = plain.bfloat16()[0](x, context)
        assert rel_error(model[0](x, context).float(), expected.float()) <= 2e-2
    swap_out(model)
    assert type(model[0]) is CrossAttention and model[0].attention_backend == "sdpa"


def test_float32_hands_onednn_contiguous_operands_also_for_one_row(monkeypatch):
    """With one row (a guided batch's first self-attention), reshape could keep strided views of k and v, on which
    oneDNN's matmul is many times slower; they are copied instead."""
    operands = []
    matmul = blocked._times_transposed
    monkeypatch.setattr(blocked, "_times_transposed", lambda x, w: operands.extend((x, w)) or matmul(x, w))
    q, k, v = torch.randn(1, 40, 32), torch.randn(1, 30, 32), torch.randn(1, 30, 32)
    out = blocked_attention(q, k, v, 4)
    assert rel_error(out.double(), reference(q, k, v, 4, causal=False)) <= 1e-5
    assert len(operands) == 16 and all(t.is_contiguous() for t in operands)
