"""The prompt-control lines of tools/bench.py: LoRA switching and weighted long prompts, ours beside diffusers.

- Switching between two LoRAs: ours restores the weights the last one touched from its backups and merges the
  next (ldm/networks/merged.py); diffusers unfuses, unloads, loads and fuses (load_lora_weights + fuse_lora).
- A U-Net step with a LoRA merged: no per-step cost on either side once merged (the note gives ours without one).
- A weighted 150-token prompt and its negative (3 chunks), nothing cached: ours parses, chunks, encodes and
  weights; diffusers' text encoder runs on the same chunks' ids (what encode_prompt would run per chunk).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from ldm.text.chunking import chunk_prompt

RANK = 16
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out", "q_proj", "k_proj",
           "v_proj", "out_proj", "fc1", "fc2")  # fmt: skip
WEIGHTED = ", ".join(["a (detailed:1.2) castle on a [misty] hill", "((golden hour light))", "oil painting"] * 8)
NEGATIVE = "(blurry:1.3), low quality, [watermark]"


def lora_files(theirs, cache: Path, model: str) -> list[Path]:
    """Two random kohya LoRAs (rank 16, alpha 8) over every attention and feed-forward layer and the text encoder."""
    files = [cache / f"{model}-lora-{i}.safetensors" for i in range(2)]
    if all(f.is_file() for f in files):
        return files
    modules = [("lora_unet_", n, m) for n, m in theirs.unet.named_modules() if n.endswith(TARGETS)]
    modules += [("lora_te_", n if n.startswith("text_model.") else "text_model." + n, m)
                for n, m in theirs.text_encoder.named_modules() if n.endswith(TARGETS)]  # fmt: skip
    for i, path in enumerate(files):
        g, tensors = torch.Generator().manual_seed(i), {}
        for prefix, name, module in modules:
            if isinstance(module, torch.nn.Linear):
                shapes = ((RANK, module.in_features), (module.out_features, RANK))
            elif isinstance(module, torch.nn.Conv2d):
                shapes = ((RANK, module.in_channels, 1, 1), (module.out_channels, RANK, 1, 1))
            else:
                continue
            key = prefix + name.replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = torch.randn(*shapes[0], generator=g) * 0.01
            tensors[f"{key}.lora_up.weight"] = torch.randn(*shapes[1], generator=g) * 0.01
            tensors[f"{key}.alpha"] = torch.tensor(8.0)
        save_file(tensors, path)
    return files


def prompt_rows(ours, theirs, args, row: Callable[..., None], repeats_of: Callable, cfg_latents: Callable) -> None:
    """Rows for the "prompt" line; ours and theirs end as they started (no LoRA)."""
    files = lora_files(theirs, args.cache, args.model)
    turn = {"ours": 0, "theirs": 0}

    def ours_switch() -> None:
        turn["ours"] += 1
        ours.unload_loras()  # the public way to switch: back to the weights as loaded, then the other one
        ours.load_lora(files[turn["ours"] % 2])

    def theirs_switch() -> None:
        turn["theirs"] += 1
        if theirs.get_active_adapters():
            theirs.unfuse_lora()
            theirs.unload_lora_weights()
        theirs.load_lora_weights(str(files[turn["theirs"] % 2]))
        theirs.fuse_lora(lora_scale=1.0)

    row("switch between two LoRAs (rank 16, every attention layer and the text encoder), merged (s)",
        *repeats_of(ours_switch, theirs_switch, args.repeats))  # fmt: skip
    context, t = ours.encode(["a house", ""], 1), torch.tensor([500, 500])
    size = max(args.sizes)
    z, z_batch = cfg_latents(size)
    ours_step = lambda: ours.model.unet(z, t[:1], context)  # noqa: E731
    theirs_step = lambda: theirs.unet(z_batch, t, encoder_hidden_states=context)  # noqa: E731
    with_lora, theirs_seconds = repeats_of(ours_step, theirs_step, args.repeats)
    ours.unload_loras()
    theirs.unfuse_lora()
    theirs.unload_lora_weights()
    without, _ = repeats_of(ours_step, theirs_step, args.repeats)  # alternated as with the LoRA: the same load
    row(f"U-Net with CFG, {size}x{size}, a LoRA merged (s)", with_lora, theirs_seconds, vs_no_lora=with_lora / without)

    chunks = [c.ids for p in (WEIGHTED, NEGATIVE) for c in chunk_prompt(p, ours.tokenizer)]
    ids = torch.tensor(chunks)

    def ours_encode() -> torch.Tensor:
        ours.prompt_cache.entries.clear()
        return ours.encode([WEIGHTED, NEGATIVE], 1)

    row(f"weighted {len(ours.tokenizer.encode(WEIGHTED))}-token prompt + negative ({len(chunks)} chunks), nothing "
        "cached, vs diffusers' text encoder on the same chunks (s)",
        *repeats_of(ours_encode, lambda: theirs.text_encoder(ids)[0], args.repeats))  # fmt: skip
