"""Model configuration: frozen dataclasses whose defaults are Stable Diffusion v1.

Field names follow the original CompVis `v1-inference.yaml` (U-Net, VAE) and transformers'
`CLIPTextConfig` (text encoder), so a reader can check them against either source.
Presets live as JSON in `configs/` at the top of the repository.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ldm.errors import ConfigError
from ldm.shipped import shipped

CONFIGS_DIR = shipped("configs")
PREDICTION_TYPES = ("epsilon", "v_prediction")  # what a U-Net outputs, in diffusers' scheduler names


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4  # 9 for the inpainting model: latents + mask + masked-image latents
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (4, 2, 1)  # downsampling factors that get a SpatialTransformer
    num_heads: int = 8  # v1 fixes the head count, so the head width is channels // num_heads
    transformer_depth: int = 1
    context_dim: int = 768
    norm_groups: int = 32
    # What the U-Net outputs: "epsilon" (the noise, SD v1) or "v_prediction" (sqrt(a) noise - sqrt(1-a) x0, as
    # SD 2.x-v; diffusers' scheduler names, CompVis' `parameterization: "v"`).
    prediction_type: str = "epsilon"

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(
                f"unknown prediction_type {self.prediction_type!r}; use one of {', '.join(PREDICTION_TYPES)}"
            )

    def level_channels(self) -> list[int]:
        return [self.model_channels * m for m in self.channel_mult]

    def has_attention(self, level: int) -> bool:
        return 2**level in self.attention_resolutions


@dataclass(frozen=True)
class VAEConfig:
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    norm_groups: int = 32
    scale_factor: float = 0.18215  # latents are multiplied by this after encoding (applied by the pipeline)

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclass(frozen=True)
class TextEncoderConfig:
    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5


@dataclass(frozen=True)
class ModelConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        parts = {"unet": UNetConfig, "vae": VAEConfig, "text_encoder": TextEncoderConfig}
        unknown = set(data) - set(parts)
        if unknown:
            raise ConfigError(f"unknown model config section(s) {sorted(unknown)}; expected {sorted(parts)}")
        return cls(**{name: _build(kind, data.get(name, {}), name) for name, kind in parts.items()})

    @classmethod
    def from_json(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist; pass a JSON file like configs/sd-v1.json") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path} is not valid JSON ({e}); fix it or use a preset") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a JSON object with unet/vae/text_encoder sections")
        return cls.from_dict(data)

    @classmethod
    def preset(cls, name: str) -> ModelConfig:
        """A preset from configs/: 'sd-v1', 'sd-v1-inpaint', ..."""
        path = CONFIGS_DIR / f"{name}.json"
        if not path.is_file():
            known = sorted(p.stem for p in CONFIGS_DIR.glob("*.json"))
            raise ConfigError(f"no preset named {name!r}; known presets: {', '.join(known)}")
        return cls.from_json(path)


def _build(kind: type, values: Any, section: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"config section {section!r} must be a JSON object")
    fields = {f.name: f for f in dataclasses.fields(kind)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigError(f"unknown field(s) {sorted(unknown)} in config section {section!r}; known: {sorted(fields)}")
    # JSON has no tuples; the dataclasses are frozen and hashable, so turn lists back into tuples.
    return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
