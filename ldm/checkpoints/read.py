"""Read SD v1 checkpoints in any layout into tensors under the ORIGINAL single-file key names.

`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.*`: our modules carry those
names, so building them (build.py) is a prefix split, a shape check and `load_state_dict(assign=True)`. What a
file is, when it does not say, comes from its shapes (detect.py). Pickles are read with torch's weights-only
unpickler: no code in a file ever runs.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ldm.checkpoints import diffusers_layout as layout
from ldm.checkpoints.mapped_pickle import remap
from ldm.checkpoints.mapped_safetensors import descriptor_error, read_tensors, reads_plainly
from ldm.config import ModelConfig
from ldm.errors import CheckpointError

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


@dataclass
class Checkpoint:
    """The tensors of a checkpoint under original key names, and the config its file declared (if any)."""

    tensors: dict[str, Tensor]
    config: ModelConfig | None = None
    path: Path | None = None
    # Read from a pickle that mapped_pickle.py could not split, or from a safetensors file whose tensors would not
    # fit under the limit on open files one mapping each: the tensors are views of one mapping of the whole file,
    # whose pages stay as long as any of them lives. A packed layer could not give its pages back.
    one_mapping: bool = False


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
        tensors, metadata, one_mapping = read_safetensors(path)
        config = _config_from_metadata(metadata, path)
        return Checkpoint(tensors, config, path, one_mapping)
    tensors, one_mapping = read_pickle_checkpoint(path)
    return Checkpoint(tensors, None, path, one_mapping)


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"  # 8-byte header length, then the JSON header


def read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str], bool]:
    """The tensors of a safetensors file, its metadata, and whether the tensors share one mapping of the file
    (mapped_safetensors.py: each its own mapping where the limit on open files allows, read into memory if small)."""
    try:
        return read_tensors(path)
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
    storage is its own mapping of the file (mapped_pickle.py) unless the second value says they share one; a small
    file is read into memory, storage by storage."""
    try:
        with path.open("rb") as f:
            is_zip = zipfile.is_zipfile(f)
    except OSError as e:
        if error := descriptor_error(path, e):
            raise error from None
        is_zip = False  # unreadable, as is_zipfile itself would say
    if not is_zip:
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint (no zip archive inside); pass an SD v1 .safetensors/.ckpt file"
        )
    plain = reads_plainly(path.stat().st_size)
    data = load_restricted_pickle(path, mmap=not plain)
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]  # Lightning wraps the weights with epoch, global_step, callbacks, ...
    if not isinstance(data, dict) or not any(isinstance(v, Tensor) for v in data.values()):
        raise CheckpointError(f"{path} holds no tensors; it is not a model checkpoint")
    tensors = {k: v for k, v in data.items() if isinstance(v, Tensor)}
    if plain:
        return tensors, False
    remapped = remap(path, tensors)
    return (tensors, True) if remapped is None else (remapped, False)


def load_restricted_pickle(path: Path, *, mmap: bool = False) -> object:
    """What a PyTorch pickle holds, read with torch's weights-only unpickler: tensors and plain containers; the
    classes of training frameworks become inert placeholders, and any other global is refused (nothing runs)."""
    inert: list[tuple[type, str]] = []
    for _ in range(64):  # each round replaces one more framework global by _Inert
        try:
            with torch.serialization.safe_globals(inert):
                data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
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
            if error := descriptor_error(path, e):
                raise error from None
            raise CheckpointError(
                f"{path} is a damaged PyTorch checkpoint ({_first_line(e)}); re-download it"
            ) from None
    else:
        raise CheckpointError(f"{path} names too many unknown classes in its pickle; convert it to .safetensors first")
    return data


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
            state, _, shared = read_safetensors(weights)
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


def ema_key(unet_key: str) -> str:
    """Where LitEma keeps the EMA copy of a U-Net weight: dots removed, under model_ema."""
    return EMA_PREFIX + ("diffusion_model." + unet_key).replace(".", "")


def refuse_broken_values(tensor: Tensor, path: object, where: str, limit: float, what: str) -> None:
    """A one-line CheckpointError for NaN or infinite values, or values beyond `limit` (what `what` never holds)."""
    if not torch.isfinite(tensor).all():
        raise CheckpointError(f"{path} holds NaN or infinite values{where}; the file is broken")
    if tensor.abs().max() > limit:
        largest = f"{tensor.abs().max():.3g}"
        raise CheckpointError(
            f"{path} holds values up to {largest}{where}, far outside what {what} holds; the file is broken"
        )
