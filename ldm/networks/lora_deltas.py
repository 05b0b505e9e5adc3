"""The weight change ΔW a LoRA module makes, before its multiplier (A1111 extensions-builtin/Lora: network_lora.py,
network_hada.py, network_lokr.py and lyco_helpers.py; Hu et al. 2021 for LoRA, LyCORIS for LoHa / LoKr).

LoRA: ΔW = up @ down (convs flattened to matrices), with a `lora_mid` core: einsum(mid, up, down) (LoCon's CP
form). LoHa: (w1_a @ w1_b) ⊙ (w2_a @ w2_b), each factor optionally through a Tucker core t. LoKr: kron(w1, w2),
each side whole or a product of two factors. Scale: the file's `scale`, else alpha / rank, else 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ldm.errors import ConfigError


def delta(parts: dict[str, Tensor], shape: torch.Size, dyn: int | None = None) -> Tensor:
    """ΔW for a weight of `shape`, scale included (float32). `dyn` keeps a LoRA's first ranks only (A1111's dyn)."""
    if "up" in parts:
        up, down = parts["up"], parts["down"]
        rank = down.shape[0] if dyn is None else min(dyn, down.shape[0])
        up2, down2 = up.reshape(up.shape[0], -1)[:, :rank], down.reshape(down.shape[0], -1)[:rank]
        if "mid" in parts:
            change = torch.einsum("nmkl,in,mj->ijkl", parts["mid"][:rank, :rank], up2, down2)
        else:
            change = up2 @ down2
        dim = rank
    elif "hada_w1_a" in parts:
        change = _hada_factor(parts, "1") * _hada_factor(parts, "2")
        dim = parts["hada_w1_b"].shape[0]
    elif "lokr_w1" in parts or "lokr_w1_a" in parts:
        w1 = parts["lokr_w1"] if "lokr_w1" in parts else parts["lokr_w1_a"] @ parts["lokr_w1_b"]
        if "lokr_w2" in parts:
            w2 = parts["lokr_w2"]
        elif "lokr_t2" in parts:
            w2 = _tucker(parts["lokr_t2"], parts["lokr_w2_a"], parts["lokr_w2_b"])
        else:
            w2 = parts["lokr_w2_a"] @ parts["lokr_w2_b"]
        if w1.ndim == 2 and (len(shape) == 4 or w2.ndim == 4):  # a conv's: w1 acts across its kernel
            w1 = w1[:, :, None, None]
        if w2.ndim == 2 and w1.ndim == 4:
            w2 = w2[:, :, None, None]
        change = torch.kron(w1, w2)
        dim = next((parts[k].shape[0] for k in ("lokr_w1_b", "lokr_w2_b") if k in parts), None)
    else:
        raise ConfigError(f"a LoRA module has none of lora_up/lora_B, hada_* or lokr_* ({', '.join(parts)})")
    return _fit(change, shape) * scale(parts, dim)


def add_change(weight: Tensor, parts: dict[str, Tensor], multiplier: float, dyn: int | None = None) -> None:
    """weight += multiplier * ΔW, in place. A plain LoRA goes straight in as one addmm (no ΔW-sized temporaries:
    switching LoRAs is mostly this); the rest through `delta` in float32."""
    if "up" in parts and "mid" not in parts and weight.is_contiguous():
        up, down = parts["up"], parts["down"]
        rank = down.shape[0] if dyn is None else min(dyn, down.shape[0])
        up2 = up.reshape(up.shape[0], -1)[:, :rank].to(weight.device, weight.dtype)
        down2 = down.reshape(down.shape[0], -1)[:rank].to(weight.device, weight.dtype)
        if up2.shape[0] == weight.shape[0] and up2.shape[0] * down2.shape[1] == weight.numel():
            weight.view(up2.shape[0], -1).addmm_(up2, down2, alpha=multiplier * scale(parts, rank))
            return
    change = delta(parts, weight.shape, dyn).to(weight.device)
    weight.copy_((weight.float() + multiplier * change).to(weight.dtype))


def scale(parts: dict[str, Tensor], dim: int | None) -> float:
    if "scale" in parts:
        return parts["scale"].item()
    alpha = parts["alpha"].item() if "alpha" in parts else None
    if alpha and dim:  # no alpha, or kohya's alpha 0: alpha = rank, scale 1
        return alpha / dim
    return 1.0


def delta_shape(parts: dict[str, Tensor], name: str) -> torch.Size:
    """The shape `delta` makes, before fitting, from the factors' shapes alone (checked before any merge)."""
    try:
        if "up" in parts:
            up, down = parts["up"], parts["down"]
            if "down" not in parts or up.shape[1] != down.shape[0]:
                raise ValueError
            kernel = parts["mid"].shape[2:] if "mid" in parts else down.shape[2:]
            return torch.Size((up.shape[0], down.shape[1], *kernel))
        probe = {k: torch.zeros(v.shape) for k, v in parts.items()}  # LoHa / LoKr: small factors, compute it
        return delta(probe, torch.Size(()), None).shape
    except (KeyError, ValueError, RuntimeError, IndexError):
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in parts.items())
        raise ConfigError(f"the LoRA module {name} has factors that do not multiply ({shapes})") from None


def _hada_factor(parts: dict[str, Tensor], i: str) -> Tensor:
    a, b = parts[f"hada_w{i}_a"], parts[f"hada_w{i}_b"]
    if f"hada_t{i}" in parts:
        return _tucker(parts[f"hada_t{i}"], a, b)
    return a @ b.reshape(b.shape[0], -1)


def _tucker(t: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """A CP / Tucker factor (LyCORIS' layout): core t (r, r, kh, kw), a (r, out), b (r, in) -> (out, in, kh, kw)."""
    return torch.einsum("ijkl,jr,ip->prkl", t, b.reshape(b.shape[0], -1), a.reshape(a.shape[0], -1))


def _fit(change: Tensor, shape: torch.Size) -> Tensor:
    """The change in the weight's shape: as is or reshaped (Linear <-> 1x1 conv, LoHa's flattened conv), or a
    4-channel conv_in change zero-padded to an inpainting model's 9 input channels."""
    if len(shape) == 0 or change.shape == shape:
        return change
    if change.numel() == shape.numel():
        return change.reshape(shape)
    if change.ndim == 2 and len(shape) == 4:
        change = change.reshape(shape[0], -1, *shape[2:])
    padded = change.new_zeros(shape)
    padded[:, : change.shape[1]] = change
    return padded
