"""Build ready modules from a checkpoint's tensors: created on the meta device, given the file's tensors, checked
whole before anything is loaded. No random initialisation, no second copy of the weights."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ldm.checkpoints.detect import detect_family, infer_config
from ldm.checkpoints.read import PREFIXES, UNUSED_KEYS, Checkpoint, ema_key, read_checkpoint
from ldm.config import ModelConfig
from ldm.errors import CheckpointError
from ldm.models.text_encoder import TextEncoder
from ldm.models.unet import UNetModel
from ldm.models.vae import AutoencoderKL


@dataclass
class Model:
    """The three modules of an SD v1 model, ready for inference."""

    unet: UNetModel
    vae: AutoencoderKL
    text_encoder: TextEncoder
    config: ModelConfig
    family: str
    path: Path | None = None
    unused: list[str] = field(default_factory=list)  # keys of the file that inference does not need
    one_mapping: bool = False  # as in Checkpoint


def split_components(
    tensors: dict[str, Tensor], *, ema: bool = False
) -> tuple[dict[str, dict[str, Tensor]], list[str]]:
    """Tensors per component (prefix removed), and the keys left over that inference does not use."""
    parts: dict[str, dict[str, Tensor]] = {c: {} for c in PREFIXES}
    leftover = []
    for key, value in tensors.items():
        component = next((c for c, p in PREFIXES.items() if key.startswith(p)), None)
        if component is None or key in UNUSED_KEYS:
            leftover.append(key)
        else:
            parts[component][key[len(PREFIXES[component]) :]] = value
    if ema:
        ema_weights = {k: tensors[ema_key(k)] for k in parts["unet"] if ema_key(k) in tensors}
        if not ema_weights:
            raise CheckpointError(
                "ema=True but this checkpoint has no EMA weights (model_ema.*); load it without --ema"
            )
        parts["unet"].update(ema_weights)
    return parts, leftover


def _fit_problems(module: nn.Module, state: dict[str, Tensor], what: str) -> str | None:
    """What keeps `state` from loading into `module` exactly, in one sentence; None when it fits."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"{len(names)} {label} (first: {', '.join(names[:3])})"
        for label, names in (("missing", missing), ("unexpected", unexpected), ("with the wrong shape", wrong))
        if names
    ]
    return f"{what}: {'; '.join(problems)}" if problems else None


def build_model(
    checkpoint: Checkpoint,
    *,
    config: ModelConfig | None = None,
    ema: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    as_read: Collection[str] = (),
) -> Model:
    """Modules for the checkpoint: created on meta, given the file's tensors, converted to `dtype` once.

    In the components named in `as_read`, conv and linear weights (2-D and 4-D) keep the file's dtype, for their
    layers to quantize (ldm/cpu/int8.py) without a float32 copy first.

    The checkpoint's tensors are handed over (its dict is left empty): each file tensor is let go as soon as its
    converted copy exists, so a float16 file loading as float32 never holds the whole file beside the whole copy
    (a mapped tensor gives its pages back when dropped; ldm/checkpoints/mapped_safetensors.py)."""
    family = detect_family(checkpoint.tensors)
    config = config or checkpoint.config or infer_config(checkpoint.tensors)
    parts, leftover = split_components(checkpoint.tensors, ema=ema)
    with torch.device("meta"):
        modules = {
            "unet": UNetModel(config.unet),
            "vae": AutoencoderKL(config.vae),
            "text_encoder": TextEncoder(config.text_encoder),
        }
    problems = [p for name, module in modules.items() if (p := _fit_problems(module, parts[name], name))]
    if problems:  # checked for all three before any is filled: refuse rather than half-load
        raise CheckpointError(
            f"the weights do not fit the architecture ({' | '.join(problems)}); nothing was loaded. "
            "Pass --config for a non-standard model, or check the file"
        )
    checkpoint.tensors = {}
    for name, module in modules.items():
        state, converted = parts.pop(name), {}
        for key in list(state):
            keep = name in as_read and key.endswith(".weight") and state[key].dim() in (2, 4)
            converted[key] = _convert(state.pop(key), None if keep else dtype, device)
        module.load_state_dict(converted, assign=True)
        module.eval().requires_grad_(False)
    return Model(**modules, config=config, family=family, path=checkpoint.path, unused=leftover,
                 one_mapping=checkpoint.one_mapping)  # fmt: skip


def _convert(t: Tensor, dtype: torch.dtype | None, device: torch.device | str) -> Tensor:
    if dtype is not None and t.is_floating_point():
        return t.to(device=device, dtype=dtype)
    return t.to(device=device)


def load_model(
    path: str | Path,
    *,
    config: ModelConfig | None = None,
    ema: bool = False,
    dtype: torch.dtype | None = torch.float32,
    device: torch.device | str = "cpu",
    as_read: Collection[str] = (),
) -> Model:
    """Read any SD v1 checkpoint and build its modules: the one call the pipeline and tools use."""
    return build_model(read_checkpoint(path), config=config, ema=ema, dtype=dtype, device=device, as_read=as_read)
