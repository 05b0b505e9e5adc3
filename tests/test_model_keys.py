"""Our modules, built on meta from a preset, have exactly the keys and shapes of the real SD v1 files."""

import json
from pathlib import Path

import pytest
import torch

from ldm.checkpoints.read import PREFIXES, UNUSED_KEYS
from ldm.config import ModelConfig
from ldm.models.text_encoder import TextEncoder
from ldm.models.unet import UNetModel
from ldm.models.vae import AutoencoderKL

DATA = Path(__file__).parent / "data"


def our_state_shapes(cfg: ModelConfig) -> dict[str, list[int]]:
    with torch.device("meta"):
        modules = {
            "unet": UNetModel(cfg.unet),
            "vae": AutoencoderKL(cfg.vae),
            "text_encoder": TextEncoder(cfg.text_encoder),
        }
    return {PREFIXES[c] + k: list(v.shape) for c, m in modules.items() for k, v in m.state_dict().items()}


@pytest.mark.parametrize(
    ("manifest", "preset"),
    [
        ("sd_v1_original_keys.json", "sd-v1"),
        ("sd_v1_inpaint_original_keys.json", "sd-v1-inpaint"),
        ("sd_v1_tiny_original_keys.json", "tiny"),
    ],
)
def test_state_dict_equals_the_real_file_except_the_named_unused_keys(manifest, preset):
    real = {k: shape for k, (shape, _) in json.loads((DATA / manifest).read_text()).items()}
    assert set(UNUSED_KEYS) <= set(real)  # every name on the list is a real key, not a guess
    expected = {k: v for k, v in real.items() if k not in UNUSED_KEYS}
    assert our_state_shapes(ModelConfig.preset(preset)) == expected
