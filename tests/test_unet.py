"""The U-Net against diffusers' UNet2DConditionModel, weights moved through our key table."""

import pytest
import torch
from helpers import reference_kwargs, rel_error

from ldm.checkpoints import diffusers_layout as layout
from ldm.config import ModelConfig, UNetConfig
from ldm.cpu.swap_in import swap_in
from ldm.errors import ConfigError
from ldm.models.attention import set_attention_backend
from ldm.models.unet import UNetModel

ODD = UNetConfig(model_channels=24, channel_mult=(1, 3, 2), num_res_blocks=2, attention_resolutions=(4, 1),
                 num_heads=3, context_dim=20, norm_groups=4, transformer_depth=2)  # fmt: skip
CONFIGS = {
    "tiny": ModelConfig.preset("tiny").unet,
    "odd-channels-2-blocks-depth-2": ODD,
    "inpainting-9-channels": UNetConfig(**{**ODD.__dict__, "in_channels": 9, "num_res_blocks": 1}),
    "attention-everywhere-3-levels": UNetConfig(
        model_channels=16,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(1, 2, 4),
        num_heads=2,
        context_dim=8,
        norm_groups=8,
    ),  # fmt: skip
    "attention-only-at-level-1": UNetConfig(**{**ODD.__dict__, "attention_resolutions": (2,), "transformer_depth": 1}),
    "attention-only-in-the-middle": UNetConfig(**{**ODD.__dict__, "attention_resolutions": ()}),
}


def reference_and_ours(cfg: UNetConfig, std: float = 0.05, kwargs: dict | None = None):
    """kwargs: the reference's own config (independent of ours); by default our translation of `cfg`."""
    from diffusers import UNet2DConditionModel

    ref = UNet2DConditionModel(**(kwargs or layout.unet_config_to_diffusers(cfg))).eval()
    with torch.no_grad():
        for p in ref.parameters():  # default init zeroes some layers; random everywhere tests every weight
            p.normal_(0, std)
    with torch.device("meta"):
        ours = UNetModel(cfg)
    ours.load_state_dict(layout.unet_from_diffusers(ref.state_dict(), cfg), strict=True, assign=True)
    return ref, ours.eval()


@pytest.mark.parametrize("packed", [False, True], ids=["plain", "packed"])
@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("size", [(8, 8), (8, 12), (12, 4)])
def test_matches_diffusers(name, size, packed):
    cfg = CONFIGS[name]
    # The tiny preset's reference comes from the fixture's kwargs, the others from our translation.
    ref, ours = reference_and_ours(cfg, kwargs=reference_kwargs("unet", "tiny") if name == "tiny" else None)
    if packed:  # the layers the pipeline runs on a CPU (ldm/cpu/swap_in.py)
        swap_in(ours)
    x = torch.randn(2, cfg.in_channels, *size)
    t = torch.tensor([3.0, 917.0])
    context = torch.randn(2, 7, cfg.context_dim)
    with torch.no_grad():
        expected = ref(x, t, context).sample
        assert rel_error(ours(x, t, context), expected) <= 1e-5
        assert rel_error(ours(x, t.long(), context), ref(x, t.long(), context).sample) <= 1e-5


@pytest.mark.parametrize("packed", [False, True], ids=["plain", "packed"])
@pytest.mark.parametrize("name", CONFIGS)
def test_a_guided_batch_is_x_once_with_each_context(name, packed):
    """x (B), contexts (2B: uncond, cond) = diffusers on x repeated; the layers before the first cross-attention
    see B rows, the rest 2B."""
    cfg = CONFIGS[name]
    ref, ours = reference_and_ours(cfg)
    if packed:
        swap_in(ours)
    x, t = torch.randn(2, cfg.in_channels, 8, 8), torch.tensor([3.0, 917.0])
    contexts = torch.randn(4, 7, cfg.context_dim)
    rows = {}
    for name_, module in (("first", ours.input_blocks[1][0]), ("last", ours.out)):
        module.register_forward_pre_hook(lambda m, args, n=name_: rows.update({n: args[0].shape[0]}) and None)
    with torch.no_grad():
        expected = ref(torch.cat([x, x]), torch.cat([t, t]), contexts).sample
        assert rel_error(ours(x, t, contexts), expected) <= 1e-5
    assert rows == {"first": 2, "last": 4}
    with pytest.raises(ConfigError, match="multiple of x rows"):
        ours(x, t, contexts[:3])
    with torch.no_grad():  # one timestep for the batch, as diffusers takes it
        assert torch.equal(ours(x, t[:1], contexts), ours(x, t[:1].expand(2), contexts))


def test_attention_backends_agree():
    cfg = CONFIGS["tiny"]
    _, ours = reference_and_ours(cfg)
    x, t, context = torch.randn(1, 4, 16, 16), torch.tensor([500.0]), torch.randn(1, 77, cfg.context_dim)
    with torch.no_grad():
        expected = ours(x, t, context)
        for backend in ("math", "sliced"):
            set_attention_backend(ours, backend)
            assert rel_error(ours(x, t, context), expected) <= 1e-5


@pytest.mark.full
def test_full_sd_v1_shapes_match_diffusers():
    cfg = ModelConfig.preset("sd-v1").unet
    ref, ours = reference_and_ours(cfg, std=0.02, kwargs=reference_kwargs("unet", "sd-v1"))
    x, t, context = torch.randn(1, 4, 8, 8), torch.tensor([421.0]), torch.randn(1, 77, 768)
    with torch.no_grad():
        expected = ref(x, t, context).sample
        assert rel_error(ours(x, t, context), expected) <= 1e-5
        assert rel_error(swap_in(ours)(x, t, context), expected) <= 1e-5
