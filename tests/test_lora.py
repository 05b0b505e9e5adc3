"""LoRA merged into the weights: random kohya files made here (rank 4, alpha 4 / 1 / missing; linear, 1x1 and 3x3
targets; the text encoder too) against diffusers' load_lora_weights + fuse_lora, images with prompt tags against
diffusers' runtime scale and per-component adapter weights, LDM-style names, PEFT files, LoHa / LoKr / lora_mid
against the formulas written here; switching without reloading; bad files refused with nothing changed."""

import numpy as np
import pytest
import torch
from helpers import E2E, ddim_reference, rel_error, single_file_and_folder
from safetensors.torch import save_file

from ldm import Pipeline
from ldm.checkpoints import diffusers_layout as layout
from ldm.errors import LdmError
from ldm.generate.request import GenerationRequest

RANK = 4
UNET_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
                "attn2.to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out", "conv1", "conv2",
                "time_emb_proj")  # fmt: skip
TE_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return single_file_and_folder(tmp_path_factory.mktemp("lora"), seed=6)


def reference_pipe(folder):
    return ddim_reference(folder)


def kohya_lora(reference, seed: int, ldm_names: bool = False, alpha: float | None = 1.0) -> dict[str, torch.Tensor]:
    """A random kohya LoRA over the diffusers modules of `reference` (its names: kohya trains SD v1 on them), or with
    the original CompVis block names (`lora_unet_input_blocks_1_1_...`), as some files have them.

    One alpha for the file: diffusers 0.42.1 drops per-module alphas that differ from the most common one (its
    alpha_pattern keys keep the old `processor.to_q_lora` names, and PEFT warns they match nothing)."""
    g = torch.Generator().manual_seed(seed)
    pairs = layout.unet_pairs(E2E.unet)
    out = {}
    modules = [("lora_unet_", n, m) for n, m in reference.unet.named_modules() if n.endswith(UNET_TARGETS)]
    modules += [("lora_te_", n, m) for n, m in reference.text_encoder.named_modules() if n.endswith(TE_TARGETS)]
    for prefix, name, module in modules:
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        if ldm_names and prefix == "lora_unet_":
            name = layout.rename(name + ".weight", layout._swap(pairs)).removesuffix(".weight")
        if prefix == "lora_te_" and not name.startswith("text_model."):
            name = "text_model." + name  # kohya's names; transformers >= 5.6 has no text_model level
        key = prefix + name.replace(".", "_")
        if isinstance(module, torch.nn.Linear):
            down, up = torch.randn(RANK, module.in_features, generator=g), torch.randn(module.out_features, RANK)
        else:  # LoCon: the down conv has the layer's kernel, the up conv is 1x1
            down = torch.randn(RANK, module.in_channels, *module.kernel_size, generator=g)
            up = torch.randn(module.out_channels, RANK, 1, 1, generator=g)
        out[f"{key}.lora_down.weight"], out[f"{key}.lora_up.weight"] = down * 0.1, up * 0.1
        if alpha is not None:
            out[f"{key}.alpha"] = torch.tensor(alpha)
    return out


def ours_in_diffusers_names(pipe: Pipeline) -> dict[str, torch.Tensor]:
    unet = layout.unet_to_diffusers(pipe.model.unet.state_dict(), E2E.unet)
    te = pipe.model.text_encoder.state_dict()
    return {
        **{f"unet.{k}": v.clone() for k, v in unet.items()},
        **{f"text_encoder.{k}": v.clone() for k, v in te.items()},
    }


def fused_reference(folder, path, scale: float, **kwargs) -> dict[str, torch.Tensor]:
    reference = reference_pipe(folder)
    reference.load_lora_weights(str(path), **kwargs)
    reference.fuse_lora(components=["unet", "text_encoder"], lora_scale=scale)
    reference.unload_lora_weights()
    te = layout.text_encoder_from_diffusers(reference.text_encoder.state_dict())
    return {
        **{f"unet.{k}": v for k, v in reference.unet.state_dict().items()},
        **{f"text_encoder.{k}": v for k, v in te.items()},
    }


def assert_same_weights(ours: dict, theirs: dict, changed_at_least: int):
    compared = 0
    for key, value in ours.items():
        if key in theirs:
            difference = (value.double() - theirs[key].double()).norm()
            assert difference <= 1e-6 * max(theirs[key].double().norm(), 1e-12), key
            compared += 1
    assert compared >= changed_at_least


@pytest.mark.parametrize(("ldm_names", "alpha"), [(False, 4.0), (False, 1.0), (False, None), (True, 1.0)])
def test_merged_weights_equal_diffusers_fuse_lora(checkpoint, tmp_path, ldm_names, alpha):
    reference = reference_pipe(checkpoint[1])
    path = tmp_path / "style.safetensors"
    save_file(kohya_lora(reference, seed=1, ldm_names=ldm_names, alpha=alpha), path)
    ours = Pipeline.load(checkpoint[0], device="cpu")
    before = ours_in_diffusers_names(ours)
    ours.load_lora(path, te=0.7)
    merged = ours_in_diffusers_names(ours)
    kwargs = {"unet_config": reference.unet.config} if ldm_names else {}
    theirs = fused_reference(checkpoint[1], path, 0.7, **kwargs)
    assert_same_weights(merged, theirs, changed_at_least=len(before))
    touched = [k for k in merged if not torch.equal(merged[k], before[k])]
    assert any(".conv1." in k for k in touched) and any("text_encoder." in k for k in touched)
    assert any("proj_in" in k for k in touched) and any("time_emb_proj" in k for k in touched)
    ours.unload_loras()  # the weights as loaded, bit for bit
    assert all(torch.equal(v, before[k]) for k, v in ours_in_diffusers_names(ours).items())


def test_diffusers_own_kohya_conversion_merges_as_diffusers_fuses(checkpoint, tmp_path):
    """A file diffusers writes itself (its PEFT state dict through convert_state_dict_to_kohya)."""
    from diffusers.utils import convert_state_dict_to_kohya
    from peft.utils import get_peft_model_state_dict

    reference = reference_pipe(checkpoint[1])
    save_file(kohya_lora(reference, seed=2), tmp_path / "source.safetensors")
    reference.load_lora_weights(str(tmp_path / "source.safetensors"), adapter_name="a")
    peft = {f"{prefix}.{k}": v for prefix in ("unet", "text_encoder")
            for k, v in get_peft_model_state_dict(getattr(reference, prefix), adapter_name="a").items()}  # fmt: skip
    state = convert_state_dict_to_kohya(peft)
    assert any(k.startswith("lora_te1_") for k in state)  # its name for SD v1's text encoder too
    path = tmp_path / "converted.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    ours = Pipeline.load(checkpoint[0], device="cpu")
    ours.load_lora(path, te=1.0)
    assert_same_weights(ours_in_diffusers_names(ours), fused_reference(checkpoint[1], path, 1.0), 10)


def test_peft_lora_a_b_files_merge_as_diffusers_fuses(checkpoint, tmp_path):
    reference = reference_pipe(checkpoint[1])
    kohya = kohya_lora(reference, seed=3)
    peft = {}
    for key, value in kohya.items():
        module, _, kind = key.partition(".")
        if kind == "alpha":
            continue  # no alphas: scale 1, as PEFT files without them mean
        component, name = ("unet", module[len("lora_unet_") :]) if module.startswith("lora_unet_") else ("te", module)
        if component == "te":
            continue
        dotted = next(n for n, _ in reference.unet.named_modules() if n.replace(".", "_") == name)
        peft[f"unet.{dotted}.{'lora_A' if 'down' in kind else 'lora_B'}.weight"] = value
    path = tmp_path / "peft.safetensors"
    save_file(peft, path)
    ours = Pipeline.load(checkpoint[0], device="cpu")
    ours.load_lora(path)
    assert_same_weights(ours_in_diffusers_names(ours), fused_reference(checkpoint[1], path, 1.0), 10)


def test_prompt_tags_give_diffusers_images_and_switch_without_reloading(checkpoint, tmp_path):
    reference = reference_pipe(checkpoint[1])
    folder = tmp_path / "Lora"
    folder.mkdir()
    save_file(kohya_lora(reference, seed=4), folder / "ink.safetensors")
    save_file(kohya_lora(reference, seed=5), folder / "oil.safetensors")
    ours = Pipeline.load(checkpoint[0], device="cpu")
    ours.lora_dir = folder
    settings = {"width": 64, "height": 64}

    def image(prompt):
        request = ours.request(prompt=prompt, negative_prompt="", steps=4, sampler="ddim", seed=2, **settings)
        result = ours.generate(request, progress=False)
        return np.asarray(result.images[0]).astype(int), result

    def theirs(prompt, **kwargs):
        out = reference(prompt, negative_prompt="", num_inference_steps=4, generator=torch.Generator().manual_seed(2),
                        **settings, **kwargs)  # fmt: skip
        return np.asarray(out.images[0]).astype(int)

    plain, _ = image("a lighthouse")
    inked, result = image("a lighthouse <lora:ink:0.6>")
    reference.load_lora_weights(str(folder / "ink.safetensors"), adapter_name="ink")
    assert np.abs(inked - theirs("a lighthouse", cross_attention_kwargs={"scale": 0.6})).max() <= 2
    assert np.abs(inked - plain).max() > 10
    # te != unet: A1111's <lora:name:te:unet> == diffusers' per-component adapter weights.
    split, _ = image("a lighthouse <lora:ink:0.5:1.2>")
    reference.set_adapters(["ink"], adapter_weights=[{"unet": 1.2, "text_encoder": 0.5}])
    assert np.abs(split - theirs("a lighthouse")).max() <= 2
    # The prompt is written as given, with the LoRA's A1111 hash; the infotext reads back.
    assert result.infotexts[0].startswith("a lighthouse <lora:ink:0.6>\n") and "Lora hashes: " in result.infotexts[0]
    assert "Lora hashes" in GenerationRequest.from_infotext(result.infotexts[0]).extra
    # Another LoRA, then none: from the backups, no reload; the image without a tag is the first one exactly.
    oiled, _ = image("a lighthouse <lora:oil:0.6>")
    assert np.abs(oiled - inked).max() > 10
    again, _ = image("a lighthouse")
    assert np.array_equal(again, plain)


def reference_delta(parts: dict[str, torch.Tensor], shape) -> torch.Tensor:
    """The LyCORIS formulas, written out: LoHa (w1a w1b) * (w2a w2b); LoKr kron(w1, w2a w2b); LoRA with a mid core."""
    if "hada_w1_a" in parts:
        d = (parts["hada_w1_a"] @ parts["hada_w1_b"]) * (parts["hada_w2_a"] @ parts["hada_w2_b"])
        dim = parts["hada_w1_b"].shape[0]
    elif "lokr_w1" in parts:
        w1, w2 = parts["lokr_w1"], parts["lokr_w2_a"] @ parts["lokr_w2_b"]
        d = torch.kron(w1, w2)
        dim = parts["lokr_w2_b"].shape[0]
    else:
        up, down, mid = (
            parts["lora_up.weight"][:, :, 0, 0],
            parts["lora_down.weight"][:, :, 0, 0],
            parts["lora_mid.weight"],
        )
        d = torch.zeros(up.shape[0], down.shape[1], *mid.shape[2:])
        for k in range(mid.shape[2]):
            for m in range(mid.shape[3]):
                d[:, :, k, m] = up @ mid[:, :, k, m] @ down
        dim = down.shape[0]
    return d.reshape(shape) * (parts["alpha"].item() / dim)


def test_loha_lokr_and_lora_mid_merge_by_their_formulas(checkpoint, tmp_path):
    g = torch.Generator().manual_seed(8)
    ours = Pipeline.load(checkpoint[0], device="cpu")
    before = {k: v.clone() for k, v in ours.model.unet.state_dict().items()}
    q = "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"  # (32, 32)
    ff = "input_blocks.1.1.transformer_blocks.0.ff.net.2.weight"  # (32, 128)
    conv = "input_blocks.1.0.in_layers.2.weight"  # (32, 32, 3, 3)
    files = {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q":
            (q, {
            "hada_w1_a": torch.randn(32, 2, generator=g), "hada_w1_b": torch.randn(2, 32, generator=g),
            "hada_w2_a": torch.randn(32, 2, generator=g), "hada_w2_b": torch.randn(2, 32, generator=g),
            "alpha": torch.tensor(1.0)}),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2": (ff, {
            "lokr_w1": torch.randn(4, 8, generator=g), "lokr_w2_a": torch.randn(8, 2, generator=g),
            "lokr_w2_b": torch.randn(2, 16, generator=g), "alpha": torch.tensor(1.0)}),
        "lora_unet_down_blocks_0_resnets_0_conv1": (conv, {
            "lora_down.weight": torch.randn(4, 32, 1, 1, generator=g),
            "lora_up.weight": torch.randn(32, 4, 1, 1, generator=g),
            "lora_mid.weight": torch.randn(4, 4, 3, 3, generator=g), "alpha": torch.tensor(2.0)}),
    }  # fmt: skip
    save_file({f"{m}.{k}": v for m, (_, parts) in files.items() for k, v in parts.items()}, tmp_path / "ly.safetensors")
    ours.load_lora(tmp_path / "ly.safetensors", te=1.0, unet=0.8)
    after = ours.model.unet.state_dict()
    for weight, parts in files.values():
        expected = before[weight] + 0.8 * reference_delta(parts, before[weight].shape)
        assert rel_error(after[weight], expected) <= 1e-6, weight
    assert sum(not torch.equal(after[k], before[k]) for k in before) == 3


def test_a_4_channel_conv_in_change_is_zero_padded_for_an_inpainting_u_net():
    import dataclasses

    from ldm.networks.lora_deltas import delta
    from ldm.networks.lora_targets import targets

    inpaint = dataclasses.replace(E2E, unet=dataclasses.replace(E2E.unet, in_channels=9))
    target = targets(inpaint)["lora_unet_conv_in"]
    parts = {"down": torch.randn(RANK, 4, 3, 3), "up": torch.randn(32, RANK, 1, 1)}
    change = delta(parts, target.shape)
    assert change.shape == (32, 9, 3, 3) and change[:, 4:].abs().max() == 0 and change[:, :4].abs().max() > 0


def test_bad_loras_are_refused_in_one_line_and_change_nothing(checkpoint, tmp_path):
    reference = reference_pipe(checkpoint[1])
    good = kohya_lora(reference, seed=9)
    ours = Pipeline.load(checkpoint[0], device="cpu")
    save_file(good, tmp_path / "good.safetensors")
    ours.load_lora(tmp_path / "good.safetensors", te=0.5)
    before = ours_in_diffusers_names(ours)
    first = next(iter(good))
    nan = dict(good)
    nan[first] = torch.full_like(good[first], float("nan"))
    huge = dict(good)
    huge[first] = good[first] * 1e6
    te2 = "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"
    to_k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight"
    nowhere = {f"lora_unet_nowhere_{i}.lora_down.weight": torch.zeros(4, 4) for i in range(5)}
    bad = {
        "sdxl.safetensors": ({te2: torch.zeros(4, 1280)}, "SDXL"),
        "sd2.safetensors": ({to_k: torch.zeros(4, 1024)}, "SD 2.x"),
        "other.safetensors": ({**good, **nowhere}, "5 keys that match no layer .*nowhere_0.*nowhere_1.*nowhere_2"),
        "nan.safetensors": (nan, "NaN"),
        "huge.safetensors": (huge, "far outside"),
    }  # fmt: skip
    for name, (tensors, words) in bad.items():
        save_file(tensors, tmp_path / name)
        with pytest.raises(LdmError, match=words) as caught:
            ours.load_lora(tmp_path / name)
        assert "\n" not in str(caught.value)
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x20\x00\x00\x00\x00\x00\x00\x00{broken")
    with pytest.raises(LdmError, match="not a readable safetensors"):
        ours.load_lora(tmp_path / "corrupt.safetensors")
    ours.lora_dir = tmp_path
    with pytest.raises(LdmError, match="no LoRA named 'goood'.*closest there: good"):
        ours.generate(ours.request(prompt="x <lora:goood:1>", steps=2, width=64, height=64), progress=False)
    assert all(torch.equal(v, before[k]) for k, v in ours_in_diffusers_names(ours).items())


def test_real_sd_v1_lora_names_reach_their_layers():
    """Names of real SD v1 kohya files (the notes' list; kohya's diffusers names and the original block names)."""
    from ldm.config import ModelConfig
    from ldm.networks.lora_targets import targets

    table = targets(ModelConfig.preset("sd-v1"))
    expected = {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q":
            "input_blocks.1.1.transformer_blocks.0.attn1.to_q",
        "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_v":
            "output_blocks.11.1.transformer_blocks.0.attn2.to_v",
        "lora_unet_mid_block_attentions_0_proj_out": "middle_block.1.proj_out",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj":
            "input_blocks.1.1.transformer_blocks.0.ff.net.0.proj",
        "lora_unet_down_blocks_0_resnets_0_conv1": "input_blocks.1.0.in_layers.2",
        "lora_unet_down_blocks_0_resnets_0_time_emb_proj": "input_blocks.1.0.emb_layers.1",
        "lora_unet_up_blocks_1_resnets_0_conv_shortcut": "output_blocks.3.0.skip_connection",
        "lora_unet_down_blocks_0_downsamplers_0_conv": "input_blocks.3.0.op",
        "lora_unet_up_blocks_0_upsamplers_0_conv": "output_blocks.2.1.conv",
        "lora_unet_conv_in": "input_blocks.0.0",
        "lora_unet_conv_out": "out.2",
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k":
            "input_blocks.4.1.transformer_blocks.0.attn2.to_k",
        "lora_unet_input_blocks_1_0_in_layers_2": "input_blocks.1.0.in_layers.2",
        "lora_unet_output_blocks_2_1_conv": "output_blocks.2.1.conv",  # SD v1's first upsampler (diffusers misreads it)
        "lora_unet_output_blocks_5_2_conv": "output_blocks.5.2.conv",
        "lora_te_text_model_encoder_layers_11_self_attn_out_proj": "text_model.encoder.layers.11.self_attn.out_proj",
        "lora_te_text_model_encoder_layers_0_mlp_fc1": "text_model.encoder.layers.0.mlp.fc1",
    }  # fmt: skip
    assert {k: table[k].weight.removesuffix(".weight") for k in expected} == expected


def test_a_merge_that_fails_half_way_leaves_the_weights_as_they_were(checkpoint, tmp_path, monkeypatch):
    import ldm.networks.merged as merged

    reference = reference_pipe(checkpoint[1])
    save_file(kohya_lora(reference, seed=10), tmp_path / "a.safetensors")
    save_file(kohya_lora(reference, seed=11), tmp_path / "b.safetensors")
    ours = Pipeline.load(checkpoint[0], device="cpu")
    ours.load_lora(tmp_path / "a.safetensors")
    before = ours_in_diffusers_names(ours)
    calls = []

    def failing(weight, parts, multiplier, dyn=None):
        calls.append(1)
        if len(calls) == 20:
            raise RuntimeError("out of memory")
        return real(weight, parts, multiplier, dyn)

    real = merged.add_change
    monkeypatch.setattr(merged, "add_change", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        ours.load_lora(tmp_path / "b.safetensors")
    assert all(torch.equal(v, before[k]) for k, v in ours_in_diffusers_names(ours).items())
    assert [u.path.name for u in ours.loras.applied] == ["a.safetensors"]


def test_offloaded_and_packed_layers_see_the_same_merge(checkpoint, tmp_path):
    """The merge lands in packed CPU layers and where model offload keeps the weights: the same image both ways
    (packed against plain layers for any weight edit: tests/test_generation.py)."""
    reference = reference_pipe(checkpoint[1])
    save_file(kohya_lora(reference, seed=12), tmp_path / "c.safetensors")
    settings = {"steps": 2, "seed": 1, "width": 64, "height": 64, "progress": False}
    images = []
    for offload in (None, "model"):
        pipe = Pipeline.load(checkpoint[0], device="cpu", offload=offload)
        images.append(np.asarray(pipe("a boat", **settings)[0]).astype(int))  # layers packed, U-Net lent out
        pipe.load_lora(tmp_path / "c.safetensors", te=0.8)
        images.append(np.asarray(pipe("a boat", **settings)[0]).astype(int))
    assert np.abs(images[1] - images[0]).max() > 10 and np.abs(images[3] - images[1]).max() <= 1


def test_loras_load_inside_and_outside_inference_mode(checkpoint, tmp_path):
    """A layer that unpacks inside torch.inference_mode gives an inference tensor, which no in-place edit outside
    may touch: the weight-edit operation hands out an editable copy instead."""
    reference = reference_pipe(checkpoint[1])
    save_file(kohya_lora(reference, seed=13), tmp_path / "d.safetensors")
    ours = Pipeline.load(checkpoint[0], device="cpu")
    ours("a boat", steps=2, seed=1, width=64, height=64, progress=False)  # packs its layers under inference mode
    before = ours_in_diffusers_names(ours)
    with torch.inference_mode():
        ours.load_lora(tmp_path / "d.safetensors")
    merged = ours_in_diffusers_names(ours)
    ours.unload_loras()
    assert all(torch.equal(v, before[k]) for k, v in ours_in_diffusers_names(ours).items())
    ours.load_lora(tmp_path / "d.safetensors")
    assert all(torch.equal(v, merged[k]) for k, v in ours_in_diffusers_names(ours).items())


def test_a_text_encoder_lora_is_never_served_a_stale_encoding(checkpoint, tmp_path):
    reference = reference_pipe(checkpoint[1])
    save_file(kohya_lora(reference, seed=14), tmp_path / "e.safetensors")
    ours = Pipeline.load(checkpoint[0], device="cpu")
    before = ours.encode(["a boat"], 1)
    ours.load_lora(tmp_path / "e.safetensors", te=1.0, unet=0.0)
    assert (ours.encode(["a boat"], 1) - before).abs().max() > 1e-3
    ours.unload_loras()
    torch.testing.assert_close(ours.encode(["a boat"], 1), before, rtol=0, atol=0)


def test_an_edit_made_between_loras_is_kept(checkpoint, tmp_path):
    """Backups outlive unload_loras only while nobody else edits: an edit made meanwhile is the new base."""
    reference = reference_pipe(checkpoint[1])
    save_file(kohya_lora(reference, seed=15), tmp_path / "f.safetensors")
    ours = Pipeline.load(checkpoint[0], device="cpu")
    name = "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    ours.load_lora(tmp_path / "f.safetensors")
    ours.unload_loras()
    with ours.edit_weights("unet") as weights:
        weights[name].mul_(2.0)
    edited = ours.model.unet.state_dict()[name].clone()
    ours.load_lora(tmp_path / "f.safetensors")
    assert not torch.equal(ours.model.unet.state_dict()[name], edited)
    ours.unload_loras()
    assert torch.equal(ours.model.unet.state_dict()[name], edited)


def test_a_merged_lora_costs_nothing_per_step_every_packed_layer_packs_again(checkpoint, tmp_path):
    """Merging unpacks the layers it edits (ldm/runtime/weights.py); the next generation packs each again, so a
    step with a LoRA runs the same oneDNN kernels as one without (the bench line measures the time)."""
    from ldm.cpu.packing import PackedLayer, packing_available

    if not packing_available():
        pytest.skip("this CPU's PyTorch has no oneDNN packed ops")
    save_file(kohya_lora(reference_pipe(checkpoint[1]), seed=13), tmp_path / "p.safetensors")
    pipe = Pipeline.load(checkpoint[0], device="cpu")
    settings = {"steps": 2, "seed": 1, "width": 64, "height": 64, "progress": False}
    pipe("a boat", **settings)
    layers = [m for m in pipe.model.unet.modules() if isinstance(m, PackedLayer)]
    packed_before = {id(m) for m in layers if m.packed is not None}
    pipe.load_lora(tmp_path / "p.safetensors")
    unpacked = {id(m) for m in layers if m.packed is None}
    assert unpacked & packed_before  # the merge did reach packed layers
    pipe("a boat", **settings)
    assert {id(m) for m in layers if m.packed is not None} == packed_before
