"""Read SD v1 checkpoints in any layout, detect what they are, and build ready modules without waste.

Every source is first turned into tensors under the ORIGINAL single-file key names
(`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.*`); our modules carry
those names, so building is a prefix split, a shape check and `load_state_dict(assign=True)` into
modules created on the meta device: no random initialisation, no second copy of the weights.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ldm import diffusers_layout as layout
from ldm.config import ModelConfig, TextEncoderConfig, UNetConfig, VAEConfig
from ldm.errors import CheckpointError
from ldm.mapped_pickle import remap
from ldm.mapped_safetensors import read_mapped
from ldm.text_encoder import TextEncoder
from ldm.unet import UNetModel
from ldm.vae import AutoencoderKL

PREFIXES = {
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "text_encoder": "cond_stage_model.transformer.",
}
EMA_PREFIX = "model_ema."
# Tensors the original files carry that inference does not use: the DDPM schedule (we compute it),
# CLIP's position ids (always arange), and the EMA bookkeeping. Named here so nothing is dropped silently.
SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)
UNUSED_KEYS = (
    *SCHEDULE_BUFFERS,
    "cond_stage_model.transformer.text_model.embeddings.position_ids",
    "model_ema.decay",
    "model_ema.num_updates",
)
CONFIG_METADATA_KEY = "ldm_config"  # a single file ldm writes carries its ModelConfig as JSON here
# Training-framework objects found in Lightning .ckpt files (callbacks, hyper-parameters). They are
# replaced by an inert placeholder class, never imported; any other global in a pickle is refused.
INERT_PICKLE_MODULES = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "omegaconf.", "numpy.", "pathlib.")
FAMILIES = {4: "sd-v1", 9: "sd-v1-inpaint"}  # U-Net input channels -> family


@dataclass
class Checkpoint:
    """The tensors of a checkpoint under original key names, and the config its file declared (if any)."""

    tensors: dict[str, Tensor]
    config: ModelConfig | None = None
    path: Path | None = None
    # Read from a pickle that ldm/mapped_pickle.py could not split: the tensors are views of one mapping of the
    # whole file, whose pages stay as long as any of them lives. A packed layer could not give its pages back.
    one_mapping: bool = False


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


# ---- reading ----


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a .safetensors, .ckpt/.pt/.bin or a diffusers folder into original-layout tensors."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a .safetensors/.ckpt file or a diffusers folder")
    if path.is_dir():
        return _read_diffusers_folder(path)
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes); the download or copy did not finish")
    if _is_safetensors(path):
        tensors, metadata = read_safetensors(path)
        config = _config_from_metadata(metadata, path)
        return Checkpoint(tensors, config, path)
    tensors, one_mapping = read_pickle_checkpoint(path)
    return Checkpoint(tensors, None, path, one_mapping)


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"  # 8-byte header length, then the JSON header


def read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Memory-mapped tensors of a safetensors file (each its own mapping, ldm/mapped_safetensors.py), and its
    metadata."""
    try:
        return read_mapped(path)
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({_first_line(e)}); re-download it") from None


class _Inert:
    """Stands in for a training-framework class named in a pickle; accepts anything, does nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def read_pickle_checkpoint(path: Path) -> tuple[dict[str, Tensor], bool]:
    """Tensors of a PyTorch pickle checkpoint, read with torch's weights-only unpickler: no code runs. Each
    storage is its own mapping of the file (ldm/mapped_pickle.py) unless the second value says they share one."""
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint (no zip archive inside); pass an SD v1 .safetensors/.ckpt file"
        )
    inert: list[tuple[type, str]] = []
    for _ in range(64):  # each round replaces one more framework global by _Inert
        try:
            with torch.serialization.safe_globals(inert):
                data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            break
        except pickle.UnpicklingError as e:
            name = _unsupported_global(str(e))
            if name is None or not name.startswith(INERT_PICKLE_MODULES):
                what = f"calls {name}" if name else "uses an operation torch's safe loader refuses"
                raise CheckpointError(
                    f"{path} was refused: its pickle {what}, which could run code; "
                    "get a .safetensors version of this model or convert it with a tool you trust"
                ) from None
            inert.append((type(name.rsplit(".", 1)[-1], (_Inert,), {}), name))
        except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:
            raise CheckpointError(
                f"{path} is a damaged PyTorch checkpoint ({_first_line(e)}); re-download it"
            ) from None
    else:
        raise CheckpointError(f"{path} names too many unknown classes in its pickle; convert it to .safetensors first")
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]  # Lightning wraps the weights with epoch, global_step, callbacks, ...
    if not isinstance(data, dict) or not any(isinstance(v, Tensor) for v in data.values()):
        raise CheckpointError(f"{path} holds no tensors; it is not a model checkpoint")
    tensors = {k: v for k, v in data.items() if isinstance(v, Tensor)}
    remapped = remap(path, tensors)
    return (tensors, True) if remapped is None else (remapped, False)


def _unsupported_global(message: str) -> str | None:
    marker = "Unsupported global: GLOBAL "
    if marker not in message:
        return None
    return message.split(marker, 1)[1].split(" ", 1)[0]


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _config_from_metadata(metadata: dict[str, str], path: Path) -> ModelConfig | None:
    if CONFIG_METADATA_KEY not in metadata:
        return None
    try:
        return ModelConfig.from_dict(json.loads(metadata[CONFIG_METADATA_KEY]))
    except (json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"{path} carries a broken '{CONFIG_METADATA_KEY}' in its metadata ({e})") from None


DIFFUSERS_WEIGHTS = {
    "unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
             "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin"),
    "vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
            "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin"),
    "text_encoder": ("model.safetensors", "model.fp16.safetensors", "pytorch_model.bin", "pytorch_model.fp16.bin"),
}  # fmt: skip


def _read_diffusers_folder(path: Path) -> Checkpoint:
    if not (path / "model_index.json").is_file():
        raise CheckpointError(
            f"{path} is a folder without model_index.json; pass a diffusers model folder or a single checkpoint file"
        )
    configs, tensors, one_mapping = {}, {}, False
    for component, names in DIFFUSERS_WEIGHTS.items():
        folder = path / component
        weights = next((folder / n for n in names if (folder / n).is_file()), None)
        if weights is None or not (folder / "config.json").is_file():
            raise CheckpointError(
                f"{path} has no {component}/config.json with {names[0]}; the diffusers folder is incomplete"
            )
        try:
            configs[component] = json.loads((folder / "config.json").read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{folder / 'config.json'} is not valid JSON ({e})") from None
        if weights.suffix == ".safetensors":
            state = read_safetensors(weights)[0]
        else:
            state, shared = read_pickle_checkpoint(weights)
            one_mapping |= shared
        tensors[component] = state
    scheduler = path / "scheduler" / "scheduler_config.json"
    prediction = "epsilon"  # diffusers keeps what the U-Net predicts in the scheduler's config
    if scheduler.is_file():
        try:
            prediction = json.loads(scheduler.read_text()).get("prediction_type", prediction)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{scheduler} is not valid JSON ({e})") from None
    config = ModelConfig(
        unet=layout.unet_config_from_diffusers(configs["unet"], prediction),
        vae=layout.vae_config_from_diffusers(configs["vae"]),
        text_encoder=layout.text_encoder_config_from_diffusers(configs["text_encoder"]),
    )
    text = {k: v for k, v in tensors["text_encoder"].items() if not k.endswith("position_ids")}
    original = {
        "unet": layout.unet_from_diffusers(tensors["unet"], config.unet),
        "vae": layout.vae_from_diffusers(tensors["vae"], config.vae),
        "text_encoder": layout.text_encoder_from_diffusers(text),
    }
    merged = {PREFIXES[c] + k: v for c, state in original.items() for k, v in state.items()}
    return Checkpoint(merged, config, path, one_mapping)


# ---- what is it? ----


def detect_family(tensors: dict[str, Tensor]) -> str:
    """'sd-v1' or 'sd-v1-inpaint', or a CheckpointError that names what the file is instead."""
    keys = tensors.keys()

    def has(fragment: str) -> bool:
        return any(fragment in k for k in keys)

    if has("lora_up") or has("lora_down") or has("lora_A") or has("lora_B") or has("lora_unet_"):
        found = "a LoRA (a small add-on to a base model), not a full model"
    elif has("conditioner.embedders") or has("label_emb") or has("add_embedding"):
        found = "an SDXL checkpoint"
    elif has("cond_stage_model.model.") or _uses_linear_projection(tensors) or _context_dim(tensors) == 1024:
        found = "a Stable Diffusion 2.x checkpoint"
    elif not has(PREFIXES["unet"]) and (has("encoder.conv_in") or has("decoder.conv_in")):
        found = "a bare VAE, not a full model"
    elif has("down_blocks.") and not has(PREFIXES["unet"]):
        found = "a single diffusers component file; pass the whole diffusers folder (with model_index.json)"
    elif PREFIXES["unet"] + "input_blocks.0.0.weight" not in tensors:
        found = "not a Stable Diffusion checkpoint (no U-Net weights under model.diffusion_model.)"
    else:
        channels = tensors[PREFIXES["unet"] + "input_blocks.0.0.weight"].shape[1]
        if channels in FAMILIES:
            return FAMILIES[channels]
        found = f"an SD v1 variant with {channels} U-Net input channels (e.g. InstructPix2Pix), which ldm cannot drive"
    raise CheckpointError(f"this is {found}; ldm loads SD v1 and SD v1 inpainting checkpoints")


def _uses_linear_projection(tensors: dict[str, Tensor]) -> bool:
    w = tensors.get(PREFIXES["unet"] + "input_blocks.1.1.proj_in.weight")
    return w is not None and w.ndim == 2  # SD 2.x uses Linear proj_in, v1 a 1x1 conv


def _context_dim(tensors: dict[str, Tensor]) -> int | None:
    w = tensors.get(PREFIXES["unet"] + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight")
    return None if w is None else w.shape[1]


def infer_config(tensors: dict[str, Tensor]) -> ModelConfig:
    """The architecture of an SD v1 file, read off its tensor shapes (head counts are SD v1's: 8 and width/64)."""
    unet = {k[len(PREFIXES["unet"]) :]: v.shape for k, v in tensors.items() if k.startswith(PREFIXES["unet"])}
    vae = {k[len(PREFIXES["vae"]) :]: v.shape for k, v in tensors.items() if k.startswith(PREFIXES["vae"])}
    text = {
        k[len(PREFIXES["text_encoder"]) :]: v.shape
        for k, v in tensors.items()
        if k.startswith(PREFIXES["text_encoder"])
    }
    try:
        return ModelConfig(unet=_infer_unet(unet), vae=_infer_vae(vae), text_encoder=_infer_text_encoder(text))
    except (KeyError, IndexError, ValueError) as e:
        raise CheckpointError(
            f"cannot read the architecture off this checkpoint (missing {e}); pass --config"
        ) from None


def _infer_unet(shapes: dict[str, torch.Size]) -> UNetConfig:
    blocks = {int(k.split(".")[1]) for k in shapes if k.startswith("input_blocks.")}
    downsamples = sorted(int(k.split(".")[1]) for k in shapes if k.startswith("input_blocks.") and ".op." in k)
    per_level = downsamples[0] - 1 if downsamples else max(blocks)
    levels = (max(blocks) + 1) // (per_level + 1)
    first = [1 + level * (per_level + 1) for level in range(levels)]  # first res block of each level
    base = shapes["input_blocks.0.0.weight"][0]
    depth = len({k.split(".")[3] for k in shapes if k.startswith("middle_block.1.transformer_blocks.")})
    return UNetConfig(
        in_channels=shapes["input_blocks.0.0.weight"][1],
        out_channels=shapes["out.2.weight"][0],
        model_channels=base,
        channel_mult=tuple(shapes[f"input_blocks.{i}.0.out_layers.3.weight"][0] // base for i in first),
        num_res_blocks=per_level,
        attention_resolutions=tuple(
            sorted(
                (2**level for level, i in enumerate(first) if f"input_blocks.{i}.1.norm.weight" in shapes), reverse=True
            )
        ),
        transformer_depth=depth,
        context_dim=shapes["middle_block.1.transformer_blocks.0.attn2.to_k.weight"][1],
    )


def _infer_vae(shapes: dict[str, torch.Size]) -> VAEConfig:
    levels = 1 + max(int(k.split(".")[2]) for k in shapes if k.startswith("encoder.down."))
    base = shapes["encoder.conv_in.weight"][0]
    per_level = len({k.split(".")[4] for k in shapes if k.startswith("encoder.down.0.block.")})
    mult = tuple(shapes[f"encoder.down.{i}.block.0.conv2.weight"][0] // base for i in range(levels))
    return VAEConfig(
        in_channels=shapes["encoder.conv_in.weight"][1],
        out_ch=shapes["decoder.conv_out.weight"][0],
        ch=base,
        ch_mult=mult,
        num_res_blocks=per_level,
        z_channels=shapes["post_quant_conv.weight"][0],
    )


def _infer_text_encoder(shapes: dict[str, torch.Size]) -> TextEncoderConfig:
    vocab, width = shapes["text_model.embeddings.token_embedding.weight"]
    return TextEncoderConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=shapes["text_model.encoder.layers.0.mlp.fc1.weight"][0],
        num_hidden_layers=len({k.split(".")[3] for k in shapes if k.startswith("text_model.encoder.layers.")}),
        num_attention_heads=max(1, width // 64),  # CLIP's heads are 64 wide
        max_position_embeddings=shapes["text_model.embeddings.position_embedding.weight"][0],
    )


# ---- building ----


def ema_key(unet_key: str) -> str:
    """Where LitEma keeps the EMA copy of a U-Net weight: dots removed, under model_ema."""
    return EMA_PREFIX + ("diffusion_model." + unet_key).replace(".", "")


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
) -> Model:
    """Modules for the checkpoint: created on meta, given the file's tensors, converted to `dtype` once."""
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
    for name, module in modules.items():
        module.load_state_dict({k: _convert(v, dtype, device) for k, v in parts[name].items()}, assign=True)
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
) -> Model:
    """Read any SD v1 checkpoint and build its modules: the one call the pipeline and tools use."""
    return build_model(read_checkpoint(path), config=config, ema=ema, dtype=dtype, device=device)
