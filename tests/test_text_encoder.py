"""The CLIP text encoder against transformers' CLIPTextModel, with and without clip skip."""

import pytest
import torch
from helpers import reference_kwargs, rel_error

from ldm.checkpoints import diffusers_layout as layout
from ldm.config import ModelConfig, TextEncoderConfig
from ldm.cpu.swap_in import swap_in
from ldm.errors import ConfigError
from ldm.models.text_encoder import TextEncoder

CONFIGS = {
    "tiny": ModelConfig.preset("tiny").text_encoder,
    "odd": TextEncoderConfig(
        vocab_size=500, hidden_size=36, intermediate_size=50, num_hidden_layers=3, num_attention_heads=3
    ),  # fmt: skip
}


def reference_and_ours(cfg: TextEncoderConfig, std: float = 0.1, kwargs: dict | None = None):
    """kwargs: the reference's own config (independent of ours); by default our translation of `cfg`."""
    from transformers import CLIPTextConfig, CLIPTextModel

    ref = CLIPTextModel(CLIPTextConfig(**(kwargs or layout.text_encoder_config_to_diffusers(cfg)))).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, std)
    state = {k: v for k, v in layout.text_encoder_from_diffusers(ref.state_dict()).items() if "position_ids" not in k}
    with torch.device("meta"):
        ours = TextEncoder(cfg)
    ours.load_state_dict(state, strict=True, assign=True)
    return ref, ours.eval()


def reference_hidden(ref, ids: torch.Tensor, clip_skip: int) -> torch.Tensor:
    out = ref(ids, output_hidden_states=True)
    if clip_skip == 1:
        return out.last_hidden_state
    final_norm = getattr(ref, "text_model", ref).final_layer_norm
    return final_norm(out.hidden_states[-clip_skip])  # A1111's clip skip N: N - 1 layers from the end


@pytest.mark.parametrize("packed", [False, True], ids=["plain", "packed"])
@pytest.mark.parametrize("name", CONFIGS)
def test_matches_transformers_with_and_without_clip_skip(name, packed):
    cfg = CONFIGS[name]
    # The tiny preset's reference comes from the fixture's kwargs, the others from our translation.
    ref, ours = reference_and_ours(cfg, kwargs=reference_kwargs("text_encoder", "tiny") if name == "tiny" else None)
    if packed:  # the layers the pipeline runs on a CPU (ldm/cpu/swap_in.py)
        swap_in(ours)
    ids = torch.randint(0, cfg.vocab_size, (2, 77))
    with torch.no_grad():
        for clip_skip in range(1, cfg.num_hidden_layers + 1):
            assert rel_error(ours(ids, clip_skip=clip_skip), reference_hidden(ref, ids, clip_skip)) <= 1e-5
        assert rel_error(ours(ids, clip_skip=1), ours(ids, clip_skip=2)) > 1e-2  # clip skip does something


def test_bad_clip_skip_is_a_clear_error():
    _, ours = reference_and_ours(CONFIGS["tiny"])
    with pytest.raises(ConfigError, match="clip_skip must be between 1 and 2"):
        ours(torch.zeros(1, 77, dtype=torch.long), clip_skip=3)


@pytest.mark.full
def test_full_sd_v1_shapes_match_transformers():
    ref, ours = reference_and_ours(
        ModelConfig.preset("sd-v1").text_encoder, std=0.02, kwargs=reference_kwargs("text_encoder", "sd-v1")
    )
    ids = torch.randint(0, 49408, (2, 77))
    with torch.no_grad():
        for model in (ours, swap_in(ours)):  # plain, then the layers the pipeline runs on a CPU
            for clip_skip in (1, 2):
                assert rel_error(model(ids, clip_skip=clip_skip), reference_hidden(ref, ids, clip_skip)) <= 1e-5
