"""Speed and memory of ldm beside diffusers, on identical random weights at the real SD v1 shapes, in one run.

    python tools/bench.py                          # Markdown table to stdout; JSON with --out bench.json
    python tools/bench.py --only unet,vae --sizes 512
    python tools/bench.py --model tiny             # seconds: the smoke test's configuration
    python tools/bench.py --only floor --peer openvino --sizes 256,512   # the U-Net beside OpenVINO's
    python tools/bench.py --only floor --peer sdcpp --sizes 256          # a generation beside stable-diffusion.cpp's

The weights are generated once into bench/ (a single .safetensors for both loaders, and a diffusers folder as
the configuration diffusers' offline from_single_file needs). In-process lines time ours and diffusers
alternately (A B A B), the median of --repeats after one warm-up each, with the same thread count on both
sides. Load and end-to-end lines run each side in a fresh process (peak RSS is that process's). The floor is
the FLOPs of the work (torch.utils.flop_counter) divided by this CPU's measured matmul rate. The work is the
whole job, as diffusers does it; where ours skips part of it (a cached prompt, a guided batch's repeated
latent, upsampling convs folded), the notes say what fraction of those FLOPs ours does.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch.utils.flop_counter import (
    FlopCounterMode,
    conv_flop_count,
    flop_registry,
    register_flop_formula,
    sdpa_flop_count,
)

from ldm import Pipeline
from ldm.checkpoints.convert import write_diffusers_folder, write_single_file
from ldm.checkpoints.read import PREFIXES
from ldm.config import ModelConfig, TextEncoderConfig
from ldm.cpu.folded import FoldedUpsample, FoldingSequential
from ldm.cpu.int8 import int8_available
from ldm.cpu.packing import packing_available
from ldm.models.text_encoder import TextEncoder
from ldm.models.unet import UNetModel
from ldm.models.vae import AutoencoderKL

PROMPTS = ["a photograph of an astronaut riding a horse", ""]  # a batch of 2: the cond and uncond of CFG
LINES = ("floor", "load", "first", "text", "unet", "vae", "e2e", "bf16", "taesd", "prompt", "int8", "memory",
         "tiling")  # fmt: skip
DEFAULT_LINES = LINES[:12]  # tiling decodes 2048x2048 on both sides: minutes; ask for it with --only tiling
# The memory lines: a generation from the float16 file, each side in a fresh process; diffusers has no int8 path
# on a CPU, so its float32 stands beside our int8.
HALF_FILE_MODES = {
    "float32": (None, None, torch.float32),
    "bfloat16": (torch.bfloat16, None, torch.bfloat16),
    "int8": (None, "int8", torch.float32),
}  # mode -> (our dtype, our quantize, diffusers' dtype)
# --peer sdcpp: stable-diffusion.cpp's weight type beside each of those modes (its f16 beside our bfloat16).
SDCPP_TYPES = {"float32": "f32", "bfloat16": "f16", "int8": "q8_0"}
PREVIEW_EVERY, PREVIEW_STEPS = 5, 20  # the preview-overhead line: --preview taesd --preview-every 5, 20 steps
TILED_SIZE = 2048


def model_config(name: str) -> ModelConfig:
    if name == "tiny":  # the tiny test U-Net and VAE, with CLIP's vocabulary so real token ids fit
        tiny = ModelConfig.preset("tiny")
        text = TextEncoderConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
        return dataclasses.replace(tiny, text_encoder=text)
    return ModelConfig.preset(name)


def weights(name: str, cache: Path) -> tuple[Path, Path]:
    """(single file, diffusers folder) of a random model, written once and reused."""
    single, folder = cache / f"{name}-random.safetensors", cache / f"{name}-random-diffusers"
    if single.is_file() and (folder / "model_index.json").is_file():
        return single, folder
    config = model_config(name)
    torch.manual_seed(0)
    modules = {"unet": UNetModel(config.unet), "vae": AutoencoderKL(config.vae),
               "text_encoder": TextEncoder(config.text_encoder)}  # fmt: skip
    tensors = {PREFIXES[c] + k: v.detach() for c, m in modules.items() for k, v in m.state_dict().items()}
    write_single_file(tensors, single, config, force=True)
    write_single_file({k: v.half() for k, v in tensors.items()}, half_file(single), config, force=True)
    write_diffusers_folder(tensors, folder, config, force=True)
    return single, folder


def half_file(single: Path) -> Path:
    return single.with_name(single.stem + "-fp16.safetensors")


# ---- what each side does -------------------------------------------------------------------------------------


def load_ours(single: Path, folder: Path, dtype: torch.dtype = torch.float32):
    return Pipeline.load(single, dtype=dtype)


def load_diffusers(single: Path, folder: Path, dtype: torch.dtype = torch.float32):
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging

    logging.set_verbosity_error()
    return StableDiffusionPipeline.from_single_file(str(single), config=str(folder), local_files_only=True,
                                                    torch_dtype=dtype, safety_checker=None,
                                                    requires_safety_checker=False)  # fmt: skip


def load_raw(single: Path, folder: Path, dtype: torch.dtype = torch.float32):
    """The floor of loading: safetensors' own read of every tensor into memory."""
    from safetensors.torch import load_file

    return load_file(single)


LOADERS = {"ours": load_ours, "diffusers": load_diffusers, "raw": load_raw}


def drop_page_cache(path: Path) -> None:
    """Evict a file's pages so the next read comes from disk (no root needed)."""
    for file in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def peak_rss_gib() -> float:
    """This process's peak RSS. Linux's VmHWM belongs to the address space exec made; ru_maxrss would also
    count the parent's RSS at the fork (vfork shares it until exec), which inflated every child's figure."""
    try:
        status = Path("/proc/self/status").read_text()
        return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 2**20
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def child(args) -> None:
    """One fresh-process measurement, printed as one JSON line."""
    torch.set_num_threads(args.threads)
    single, folder = weights(args.model, args.cache)
    side, what = args.child
    if side == "diffusers":
        import diffusers  # noqa: F401  (imports are not part of loading a file, on either side)
    if what.startswith("load"):  # load-{warm,cold}[-fp16]: the fp16 file loads as a float16 model
        half = what.endswith("-fp16")
        file = half_file(single) if half else single
        if "-cold" in what:
            drop_page_cache(file)
        started = time.perf_counter()
        LOADERS[side](file, folder, torch.float16 if half else torch.float32)
        print(json.dumps({"seconds": time.perf_counter() - started, "rss": peak_rss_gib()}))
        return
    size, steps = args.child_size, args.e2e_steps
    if what.startswith("half-"):  # half-<mode>: the float16 file, computed as HALF_FILE_MODES says
        dtype, quantize, their_dtype = HALF_FILE_MODES[what.removeprefix("half-")]
        if side == "ours":
            pipe = Pipeline.load(half_file(single), dtype=dtype, quantize=quantize)
        else:
            pipe = load_diffusers(half_file(single), folder, their_dtype)
    else:
        pipe = (load_ours if side == "ours" else load_diffusers)(single, folder)
    started = time.perf_counter()
    if what == "tiling":  # decode a size that does not fit untiled, in tiles
        z = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            if side == "ours":
                pipe.decode(z, tiling=True)
            else:
                pipe.vae.enable_tiling()
                pipe.vae.decode(z)
    elif side == "ours":
        pipe(
            PROMPTS[0],
            steps=steps,
            guidance=7.5,
            sampler=args.child_sampler,
            width=size,
            height=size,
            seed=0,
            progress=False,
        )
    else:
        pipe.set_progress_bar_config(disable=True)
        generator = torch.Generator().manual_seed(0)
        pipe(PROMPTS[0], num_inference_steps=steps, guidance_scale=7.5, width=size, height=size, generator=generator)
    print(json.dumps({"seconds": time.perf_counter() - started, "rss": peak_rss_gib()}))


def launched(args, side: str, file: Path, ready: bool, cold: bool = False) -> float:
    """Seconds from launching tools/first_image.py (that side's imports only) to its pipeline ready or its image
    made (the time it prints last; the teardown after it is left out on both sides)."""
    _, folder = weights(args.model, args.cache)
    command = [sys.executable, str(Path(__file__).with_name("first_image.py")), side, str(file), str(folder),
               "--threads", str(args.threads), *(["--ready"] if ready else [])]  # fmt: skip
    if cold:
        drop_page_cache(file)
    started = time.time()  # wall clock, as the child prints it
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return float(out.split()[-1]) - started


def in_fresh_process(args, side: str, what: str, size: int = 0, sampler: str = "plms") -> dict:
    command = [sys.executable, __file__, "--child", side, what, "--model", args.model, "--cache", str(args.cache),
               "--threads", str(args.threads), "--child-size", str(size), "--child-sampler", sampler,
               "--e2e-steps", str(args.e2e_steps)]  # fmt: skip
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# ---- timing --------------------------------------------------------------------------------------------------


def alternate(ours: Callable[[], object], theirs: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median seconds of each, run A B A B after one warm-up each."""
    ours(), theirs()
    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    for _ in range(repeats):
        for name, fn in (("ours", ours), ("theirs", theirs)):
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return statistics.median(times["ours"]), statistics.median(times["theirs"])


def matmul_rate(dtype: torch.dtype, n: int = 2048, seconds: float = 2.0) -> float:
    """FLOP/s of a large square matmul, the floor every line is compared with: the faster of torch.mm and oneDNN's
    matmul (the packed layers' op). On a CPU not Intel's, a float32 torch.mm is MKL's, which runs narrower kernels
    there (ldm/cpu/features.py)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    products = [lambda: a @ b]
    if packing_available():
        packed = torch.ops.mkldnn._reorder_linear_weight(b)  # a @ b^T: the same multiply-adds
        products.append(lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""))
    return max(_rate(product, 2 * n**3, seconds / len(products)) for product in products)


def _rate(product: Callable[[], object], flop: int, seconds: float) -> float:
    product()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        product()
        count += 1
    return flop * count / (time.perf_counter() - started)


# The packed layers' oneDNN ops (ldm/cpu/packing.py) do the same multiply-adds as the aten ops they replace.
@register_flop_formula(torch.ops.mkldnn._convolution_pointwise)
def _packed_conv_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    return conv_flop_count(x_shape, w_shape, out_shape)


@register_flop_formula(torch.ops.mkldnn._linear_pointwise, get_raw=True)
def _packed_linear_flops(x, *args, out_val=None, **kwargs) -> int:
    # A packed weight, or a plain one first (blocked float32 attention's x @ w^T); .binary(x, other, weight, ...)
    # has a second input before its packed weight.
    weight = next((a for a in args if isinstance(a, torch.Tensor) and a.is_mkldnn), args[0])
    return 2 * math.prod(x.shape) * weight.shape[0]


# PyTorch counts its CUDA attention kernels, not the CPU one: without this the floor left out the attention's
# two matmuls (250 GFLOP of SD v1's 1.6 TFLOP at 512x512, as the issue's diffusers-at-1.10x-the-floor counts).
def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


if torch.ops.aten._scaled_dot_product_flash_attention_for_cpu not in flop_registry:  # a later torch may count it
    register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)(_cpu_attention_flops)


def flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def standard_flops(fn: Callable[[], object]) -> int:
    """The FLOPs of `fn` computed as written, as diffusers computes it: upsampling convs not folded."""
    folding_from = FoldedUpsample.fold_from_area, FoldingSequential.fold_from_area
    FoldedUpsample.fold_from_area = FoldingSequential.fold_from_area = math.inf
    try:
        return flops(fn)
    finally:
        FoldedUpsample.fold_from_area, FoldingSequential.fold_from_area = folding_from


# ---- the report ----------------------------------------------------------------------------------------------


def component_cases(ours, theirs, args) -> list[tuple[str, Callable, Callable, Callable]]:
    """(line, ours, diffusers, the work the floor counts) for each in-process measurement asked for."""
    cases = []
    if "text" in args.only:

        def their_module() -> torch.Tensor:  # diffusers' text encoder called once on both prompts
            tokens = theirs.tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True,
                                      return_tensors="pt")  # fmt: skip
            return theirs.text_encoder(tokens.input_ids)[0]

        def their_pipeline() -> tuple[torch.Tensor, torch.Tensor]:  # what its pipeline runs: prompt, then negative
            return theirs.encode_prompt(PROMPTS[0], "cpu", 1, True, negative_prompt=PROMPTS[1])

        def ours_uncached() -> torch.Tensor:
            ours.prompt_cache.entries.clear()
            return ours.encode(PROMPTS, 1)

        new_prompts = (f"{PROMPTS[0]}, take {i}" for i in itertools.count())

        def ours_new_prompt() -> torch.Tensor:  # what a user changing the prompt, not the negative, runs
            return ours.encode([next(new_prompts), PROMPTS[1]], 1)

        cases.append(("text encoding for CFG, nothing cached, vs diffusers' encode_prompt (s)", ours_uncached,
                      their_pipeline, ours_uncached))  # fmt: skip
        cases.append(("text encoding for CFG, nothing cached, vs diffusers' text encoder on the batch of 2 (s)",
                      ours_uncached, their_module, ours_uncached))  # fmt: skip
        cases.append(("text encoding for CFG, new prompt, empty negative cached, vs encode_prompt (s)",
                      ours_new_prompt, their_pipeline, ours_uncached))  # fmt: skip
    context, t = ours.encode(PROMPTS, 1), torch.tensor([500, 500])
    for size in args.sizes:
        z, z_batch = cfg_latents(size)
        if "unet" in args.only:
            # diffusers' pipeline repeats the latent for its two contexts; ldm's U-Net takes it once (models/unet.py)
            full = partial(ours.model.unet, z_batch, t, context)
            cases.append((f"U-Net with CFG (batch 2), {size}x{size} (s)", partial(ours.model.unet, z, t[:1], context),
                          partial(theirs.unet, z_batch, t, encoder_hidden_states=context), full))  # fmt: skip
        if "vae" in args.only:
            decode = partial(ours.model.vae.decode, z)
            cases.append((f"VAE decode, {size}x{size} (s)", decode, partial(theirs.vae.decode, z), decode))
    return cases


def cfg_latents(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One latent, and the batch of 2 a guided step gives the U-Net (the same latent, for uncond and cond)."""
    z = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(size))
    return z, torch.cat([z, z])


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def bf16_rows(ours, theirs, args, row: Callable[..., None]) -> None:
    """The U-Net in bfloat16 on both sides, its error against our float32 output, and its time against
    diffusers' float32 time (measured in the same run)."""
    fp32 = {size: None for size in args.sizes}
    context, t = ours.encode(PROMPTS, 1), torch.tensor([500, 500])
    for size in args.sizes:
        _, z_batch = cfg_latents(size)
        fp32[size] = (
            ours.model.unet(z_batch, t, context),
            statistics.median(
                _timed(partial(theirs.unet, z_batch, t, encoder_hidden_states=context)) for _ in range(args.repeats)
            ),
        )
    ours.model.unet.to(torch.bfloat16)
    theirs.unet.to(torch.bfloat16)
    bf16_rate = matmul_rate(torch.bfloat16)
    try:
        for size in args.sizes:
            z, z_batch = (latents.bfloat16() for latents in cfg_latents(size))
            cb = context.bfloat16()
            ours_fn = partial(ours.model.unet, z, t[:1], cb)
            full = partial(ours.model.unet, z_batch, t, cb)
            theirs_fn = partial(theirs.unet, z_batch, t, encoder_hidden_states=cb)
            reference, their_fp32 = fp32[size]
            mine, their = alternate(ours_fn, theirs_fn, args.repeats)
            row(f"U-Net with CFG, bfloat16, {size}x{size} (s)", mine, their, standard_flops(full) / bf16_rate,
                error_vs_fp32=relative_error(ours_fn(), reference), vs_diffusers_fp32=mine / their_fp32,
                flops_vs_floor=flops(ours_fn) / standard_flops(full))  # fmt: skip
    finally:
        ours.model.unet.float()
        theirs.unet.float()


def int8_rows(ours, theirs, args, row: Callable[..., None]) -> None:
    """The U-Net with 8-bit weights (--quantize int8) beside diffusers' float32, with its time and error against
    our float32 U-Net, measured in the same run."""
    if (reason := int8_available()) is not None:
        print(f"  no int8 line: {reason}", file=sys.stderr)
        return
    single, _ = weights(args.model, args.cache)
    int8 = Pipeline.load(single, quantize="int8")
    context, t = ours.encode(PROMPTS, 1), torch.tensor([500])
    for size in args.sizes:
        z, z_batch = cfg_latents(size)
        ours_fp32 = partial(ours.model.unet, z, t, context)
        ours_int8 = partial(int8.model.unet, z, t, context)
        theirs_fn = partial(theirs.unet, z_batch, t.expand(2), encoder_hidden_states=context)
        mine, their = alternate(ours_int8, theirs_fn, args.repeats)
        fp32 = statistics.median(_timed(ours_fp32) for _ in range(args.repeats))
        row(f"U-Net with CFG, int8 weights, {size}x{size} (s)", mine, their, vs_ours_fp32=mine / fp32,
            error_vs_fp32=relative_error(ours_int8(), ours_fp32()))  # fmt: skip


class PositionalUNet(torch.nn.Module):
    """diffusers' U-Net called as (latents, timesteps, context) -> noise, the signature a converter traces."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=context, return_dict=False)[0]


def openvino_rows(ours, theirs, args, row: Callable[..., None]) -> None:
    """Ours beside OpenVINO (what FastSD CPU and optimum-intel run): diffusers' U-Net on the same weights, converted
    by openvino.convert_model and compiled by its CPU plugin with the same threads, in float32 and with its
    bfloat16 hint (its default on CPUs with native bfloat16); each side's error against our float32."""
    import openvino

    from ldm.cpu.features import native_bfloat16

    single, _ = weights(args.model, args.cache)
    context, t = ours.encode(PROMPTS, 1), torch.tensor([500, 500])
    with torch.no_grad():
        converted = openvino.convert_model(PositionalUNet(theirs.unet.eval()), example_input=(*cfg_latents(64)[1:],
                                           t, context))  # fmt: skip
    sides = [("float32", "f32", ours)]
    if native_bfloat16():
        sides.append(("bfloat16", "bf16", Pipeline.load(single, dtype=torch.bfloat16)))
    for name, hint, mine in sides:
        config = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": args.threads,
                  "PERFORMANCE_HINT": "LATENCY"}  # fmt: skip
        request = openvino.Core().compile_model(converted, "CPU", config).create_infer_request()
        for size in args.sizes:
            z, z_batch = cfg_latents(size)
            reference = ours.model.unet(z, t[:1], context)
            inputs = [z_batch.numpy(), t.numpy(), context.numpy()]
            mine_fn = partial(mine.model.unet, z.to(mine.dtype), t[:1], context.to(mine.dtype))
            theirs_fn = partial(request.infer, inputs)
            seconds, their_seconds = alternate(mine_fn, theirs_fn, args.repeats)
            their_out = torch.from_numpy(request.infer(inputs)[0].copy())
            row(f"U-Net with CFG (batch 2), {name}, {size}x{size}, vs OpenVINO (s)", seconds, their_seconds,
                error_vs_fp32=relative_error(mine_fn(), reference),
                peer_error_vs_fp32=relative_error(their_out, reference))  # fmt: skip
        del request


def sdcpp_rows(args, row: Callable[..., None]) -> None:
    """Ours beside stable-diffusion.cpp on the float16 file: one generation each (Euler, CFG 7.5), each side in a
    fresh process, alternately; seconds after the load, and peak RSS, for each of our modes beside its type."""
    single, _ = weights(args.model, args.cache)
    size = min(args.sizes)
    peer = [args.sdcpp_python, str(Path(__file__).with_name("sdcpp_peer.py")), str(half_file(single)),
            "--size", str(size), "--steps", str(args.e2e_steps), "--threads", str(args.threads)]  # fmt: skip

    def theirs(kind: str) -> dict:
        out = subprocess.run([*peer, "--type", kind], check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    for mode, kind in SDCPP_TYPES.items():
        runs = [(in_fresh_process(args, "ours", f"half-{mode}", size, "euler"), theirs(kind))
                for _ in range(args.repeats)]  # fmt: skip
        line = f"{mode} beside stable-diffusion.cpp {kind}, float16 file, {size}x{size}, {args.e2e_steps} steps"
        row(f"{line} (s)", *(statistics.median(r[i]["seconds"] for r in runs) for i in (0, 1)))
        row(f"{line}: peak RSS (GiB)", *(max(r[i]["rss"] for r in runs) for i in (0, 1)))


def taesd_pair():
    """diffusers' AutoencoderTiny (SD v1's) with random weights, and our TAESD holding the same ones."""
    from diffusers import AutoencoderTiny

    from ldm.checkpoints.taesd import from_diffusers
    from ldm.models.taesd import TAESD, TAESDConfig

    torch.manual_seed(0)
    theirs = AutoencoderTiny().eval()
    with torch.device("meta"):
        ours = TAESD(TAESDConfig())
    ours.load_state_dict(from_diffusers(theirs.state_dict()), assign=True)
    return theirs, ours


def taesd_rows(ours, theirs, args, row: Callable[..., None]) -> None:
    """TAESD (SD v1's, random weights shared through the key table) decoding beside diffusers' AutoencoderTiny,
    with its time against our full VAE's; and what `--preview taesd --preview-every 5` adds to a 20-step
    generation: the previews' measured time over the generation's, built from the measured U-Net step and VAE
    decode (a whole 512x512 generation per side and repeat would take many minutes on a CPU)."""
    from ldm.cpu.features import native_bfloat16
    from ldm.generate.preview import picture
    from ldm.generate.tiny_decoder import fitted, taesd_decode

    their_tiny, tiny = taesd_pair()
    # As Pipeline.load fits one, with the bfloat16 copy its previews use on CPUs with native bfloat16.
    preview_copy = fitted(copy.deepcopy(tiny).to(torch.bfloat16), ours.device) if native_bfloat16() else None
    ours.taesd, ours.preview_taesd = fitted(tiny, ours.device), preview_copy
    tiny = ours.taesd
    context, t = ours.encode(PROMPTS, 1), torch.tensor([500, 500])
    previews = sum((i + 1) % PREVIEW_EVERY == 0 and i + 1 < PREVIEW_STEPS for i in range(PREVIEW_STEPS))

    def median(fn: Callable[[], object]) -> float:
        fn()
        return statistics.median(_timed(fn) for _ in range(args.repeats))

    for size in args.sizes:
        z, z_batch = cfg_latents(size)
        ours_fn, theirs_fn = partial(tiny.decode, z), partial(their_tiny.decode, z)
        mine, their = alternate(ours_fn, theirs_fn, args.repeats)
        full, their_full = median(partial(ours.decode, z)), median(partial(theirs.vae.decode, z))
        row(f"TAESD decode, {size}x{size} (s)", mine, their, standard_flops(ours_fn) / matmul_rate(torch.float32),
            vs_full_vae=mine / full)  # fmt: skip
        if preview_copy is not None:
            fast_fn = partial(taesd_decode, ours, z, preview=True)
            fast, their = alternate(fast_fn, theirs_fn, args.repeats)
            error = relative_error(fast_fn(), ours_fn().float())
            row(f"TAESD decode for previews, bfloat16, {size}x{size} (s), vs diffusers' float32", fast, their,
                standard_flops(fast_fn) / matmul_rate(torch.bfloat16), vs_full_vae=fast / full,
                error_vs_fp32=error)  # fmt: skip
        preview = median(partial(picture, ours, z, "taesd"))  # decode and PIL image, as a preview makes it
        step = median(partial(ours.model.unet, z, t[:1], context))
        their_step = median(partial(theirs.unet, z_batch, t, encoder_hidden_states=context))
        ours_share = previews * preview / (PREVIEW_STEPS * step + full)
        their_share = previews * their / (PREVIEW_STEPS * their_step + their_full)
        row(f"preview overhead, taesd every {PREVIEW_EVERY}, {PREVIEW_STEPS} steps, {size}x{size} (share)",
            ours_share, their_share, preview_seconds=preview, previews=previews)  # fmt: skip
    ours.taesd = ours.preview_taesd = None


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def tiling_error(single: Path, folder: Path) -> tuple[str, float, float]:
    """How far a tiled decode is from an untiled one at a size that fits both ways (1024x1024), each side with
    its own tiling. Random weights: a check of the blending, not of how a real VAE looks."""
    ours, theirs = load_ours(single, folder), load_diffusers(single, folder)
    z = torch.randn(1, 4, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        full = ours.decode(z)
        mine = ours.decode(z, tiling=True)
        unscaled = z / ours.model.config.vae.scale_factor
        their_full = theirs.vae.decode(unscaled).sample
        theirs.vae.enable_tiling()
        their_tiled = theirs.vae.decode(unscaled).sample
    line = "tiled vs untiled decode, 1024x1024: mean abs difference (image range 2)"
    return line, (mine - full).abs().mean().item(), (their_tiled - their_full).abs().mean().item()


def measure(args) -> list[dict]:
    torch.set_num_threads(args.threads)
    single, folder = weights(args.model, args.cache)
    rows: list[dict] = []

    def row(line: str, ours: float, theirs: float, floor: float | None = None, **extra) -> None:
        rows.append({"line": line, "ours": ours, "diffusers": theirs, "ratio": ours / theirs if theirs else None,
                     "floor": floor, "floor_ratio": ours / floor if floor else None, **extra})  # fmt: skip
        print(f"  {line}: ours {ours:.3f}, diffusers {theirs:.3f}, ratio {rows[-1]['ratio']}", file=sys.stderr)

    rate = matmul_rate(torch.float32)
    floor_info = {"fp32_gflops": rate / 1e9}
    if "floor" in args.only:
        floor_info["bf16_gflops"] = matmul_rate(torch.bfloat16) / 1e9

    def fresh_pair(line: str, what: str, size: int = 0, warm_up: bool = False, raw: Path | None = None) -> None:
        """Each side in its own fresh process, alternating; peak RSS as a line of its own. With `raw` (the file
        loaded), a raw safetensors read runs too, and the notes compare with it and with the file's size."""
        sides = ("ours", "diffusers", "raw") if raw else ("ours", "diffusers")
        for side in sides if warm_up else ():
            in_fresh_process(args, side, what, size)
        results = {side: [] for side in sides}
        for _ in range(args.repeats):
            for side in sides:
                results[side].append(in_fresh_process(args, side, what, size))
        seconds = {side: statistics.median(r["seconds"] for r in results[side]) for side in sides}
        rss = {side: max(r["rss"] for r in results[side]) for side in sides}
        extra = {"raw_seconds": seconds["raw"], "vs_raw": seconds["ours"] / seconds["raw"]} if raw else {}
        row(f"{line} (s)", seconds["ours"], seconds["diffusers"], **extra)
        extra = {"vs_file": rss["ours"] * 2**30 / raw.stat().st_size} if raw else {}
        row(f"{line}: peak RSS (GiB)", rss["ours"], rss["diffusers"], **extra)

    if "load" in args.only:
        for suffix, file in (("", single), ("-fp16", half_file(single))):
            kind = "float16 file" if suffix else "float32 file"
            fresh_pair(f"load {kind}, warm page cache", f"load-warm{suffix}", warm_up=True, raw=file)
            fresh_pair(f"load {kind}, cold page cache", f"load-cold{suffix}", raw=file)

    if "first" in args.only:  # launch to ready, and to the first 64x64 image (4 Euler steps), alternately
        cases = [(f"launch to {'ready' if ready else 'first 64x64 image'}, {kind} file, {cache} page cache (s)",
                  file, ready, cache == "cold")
                 for kind, file in (("float16", half_file(single)), ("float32", single))
                 for ready in (True, False) for cache in ("warm", "cold")]  # fmt: skip
        for line, file, ready, cold in cases:
            launched(args, "ours", file, ready)  # the warm-up also puts the interpreter's own files in cache
            launched(args, "diffusers", file, ready)
            times = [(launched(args, "ours", file, ready, cold), launched(args, "diffusers", file, ready, cold))
                     for _ in range(args.repeats)]  # fmt: skip
            row(line, statistics.median(t[0] for t in times), statistics.median(t[1] for t in times))

    if {"text", "unet", "vae", "bf16", "taesd", "prompt", "int8"} & set(args.only) or "openvino" in args.peer:
        ours_pipe, theirs_pipe = load_ours(single, folder), load_diffusers(single, folder)
        with torch.inference_mode():
            for line, ours_fn, theirs_fn, work_fn in component_cases(ours_pipe, theirs_pipe, args):
                work, done = standard_flops(work_fn), flops(ours_fn)
                extra = {} if done == work else {"flops_vs_floor": done / work}
                row(line, *alternate(ours_fn, theirs_fn, args.repeats), work / rate, **extra)
            if "bf16" in args.only:
                bf16_rows(ours_pipe, theirs_pipe, args, row)
            if "prompt" in args.only:  # LoRA switching and weighted long prompts (tools/bench_prompts.py)
                from bench_prompts import prompt_rows

                prompt_rows(ours_pipe, theirs_pipe, args, row, alternate, cfg_latents)
            if "taesd" in args.only:
                taesd_rows(ours_pipe, theirs_pipe, args, row)
            if "int8" in args.only:
                int8_rows(ours_pipe, theirs_pipe, args, row)
            if "openvino" in args.peer:
                openvino_rows(ours_pipe, theirs_pipe, args, row)
        del ours_pipe, theirs_pipe

    if "e2e" in args.only:
        for size in args.sizes:
            fresh_pair(f"end to end, {size}x{size}, {args.e2e_steps} steps", "e2e", size)

    if "memory" in args.only:
        size = min(args.sizes)
        for mode in HALF_FILE_MODES:
            fresh_pair(f"end to end from the float16 file, {mode}, {size}x{size}, {args.e2e_steps} steps",
                       f"half-{mode}", size)  # fmt: skip

    if "sdcpp" in args.peer:
        sdcpp_rows(args, row)

    if "tiling" in args.only:
        fresh_pair(f"VAE decode {TILED_SIZE}x{TILED_SIZE}, tiled", "tiling", TILED_SIZE)
        row(*tiling_error(single, folder))
    return [{"line": "matmul floor", **floor_info, "threads": args.threads, "model": args.model}, *rows]


NOTES = {
    "error_vs_fp32": "relative error vs float32 {:.1e}",
    "vs_diffusers_fp32": "{:.2f}x diffusers' float32",
    "raw_seconds": "raw safetensors read {:.3f} s",
    "vs_raw": "ours / raw {:.2f}",
    "vs_file": "ours / file size {:.2f}",
    "flops_vs_floor": "ours does {:.2f} of the floor's FLOPs",
    "vs_no_lora": "ours with / without the LoRA {:.3f}",
    "vs_full_vae": "{:.3f}x our full VAE decode",
    "vs_ours_fp32": "{:.2f}x our float32",
    "peer_error_vs_fp32": "theirs vs our float32 {:.1e}",
    "preview_seconds": "one preview (TAESD decode + PIL image) {:.3f} s",
    "previews": "{} previews",
}


def table(rows: list[dict]) -> str:
    header, *rows = rows
    rates = ", ".join(f"{k.removesuffix('_gflops')} {v:.0f} GFLOP/s" for k, v in header.items() if "gflops" in k)
    lines = [f"Model `{header['model']}`, {header['threads']} threads; matmul {rates}.",
             "Theirs: diffusers', or the peer's that the line names.", "",
             "| line | ours | theirs | ours / theirs | floor | ours / floor | notes |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        floor = f"{r['floor']:.3f} | {r['floor_ratio']:.2f}" if r["floor"] else "- | -"
        notes = "; ".join(text.format(r[key]) for key, text in NOTES.items() if key in r)
        lines.append(
            f"| {r['line']} | {r['ours']:.3f} | {r['diffusers']:.3f} | {r['ratio'] or 0:.2f} | {floor} | {notes} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sd-v1", help="config preset: sd-v1 (real shapes) or tiny")
    parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=[256, 512])
    parser.add_argument(
        "--only",
        type=lambda s: s.split(","),
        default=list(DEFAULT_LINES),
        help=f"any of {','.join(LINES)} (default: all but tiling)",
    )
    parser.add_argument("--peer", type=lambda s: s.split(","), default=[],
                        help="also measure against: openvino (pip install 'ldm[bench]'), sdcpp "
                             "(stable-diffusion.cpp: pip install stable-diffusion-cpp-python)")  # fmt: skip
    parser.add_argument("--sdcpp-python", default=sys.executable,
                        help="the Python that has stable-diffusion-cpp-python (default: this one)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--e2e-steps", type=int, default=4)
    parser.add_argument("--cache", type=Path, default=Path("bench"), help="where the random weights are kept")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--child-size", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--child-sampler", default="plms", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    unknown = set(args.only) - set(LINES)
    if unknown:
        parser.error(f"unknown --only lines {sorted(unknown)}; choose from {','.join(LINES)}")
    if set(args.peer) - {"openvino", "sdcpp"}:
        parser.error("--peer takes openvino, sdcpp")
    if "sdcpp" in args.peer and subprocess.run([args.sdcpp_python, "-c", "import stable_diffusion_cpp"],
                                               capture_output=True).returncode:  # fmt: skip
        parser.error(f"--peer sdcpp: {args.sdcpp_python} cannot import stable_diffusion_cpp; pip install "
                     "stable-diffusion-cpp-python there (it compiles from source), or pass --sdcpp-python")  # fmt: skip
    rows = measure(args)
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
