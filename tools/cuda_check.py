"""CUDA for real: ldm beside diffusers on one GPU, in one run, written as a Markdown report and a JSON file.

    python tools/cuda_check.py runs/cuda                 # on a GPU machine, about 8 minutes
    python tools/cuda_check.py runs/cuda --dry-run       # anywhere: tiny shapes on the CPU (the test suite runs it)

On the same random SD v1 weights (real shapes, made here into --cache, stored float16), ours and diffusers:
parity (euler_a and dpmpp_2m, 20 steps, guidance 7.5, one seed: ours float16 vs diffusers float16, ours float16
vs ours float32), attention backends (same image within float16 noise, speed, peak memory), speed (U-Net it/s
with CFG at batch 1, 50-step end to end, launch to the first image), memory (peak max_memory_allocated for one
image, model and sequential offload beside diffusers' enable_model_cpu_offload / enable_sequential_cpu_offload,
a tiled 2048x2048 decode), the VAE's float16 overflow fallback against the float32 decode, TAESD's decode beside
diffusers' AutoencoderTiny and our full VAE, and --compile.

Each section is timed against --minutes: what does not fit is reported as skipped, and a section that fails is
reported with its error; the report is written either way. Prerequisites are checked first, in one line each.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench  # noqa: E402

from ldm import Pipeline  # noqa: E402

PROMPT, NEGATIVE = "a photograph of an astronaut riding a horse", "blurry"
SAMPLERS = {"euler_a": "EulerAncestralDiscreteScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler"}


class Run:
    """The settings of one check: real (a GPU, SD v1 at 512x512) or dry (the CPU, tiny shapes)."""

    def __init__(self, args: argparse.Namespace):
        self.dry = args.dry_run
        self.device = torch.device("cpu" if self.dry else "cuda")
        self.half = torch.float32 if self.dry else torch.float16  # the CPU's dry run stands float32 in
        self.model = "tiny" if self.dry else "sd-v1"
        self.size, self.steps, self.long_steps = (64, 2, 3) if self.dry else (512, 20, 50)
        self.tiled = 128 if self.dry else bench.TILED_SIZE
        self.single, self.folder = bench.weights(self.model, args.cache)
        self.file = bench.half_file(self.single)
        self.deadline = time.monotonic() + args.minutes * 60

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        gc.collect()  # the pipelines of earlier checks, before the peak counts again
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 2**30 if self.device.type == "cuda" else None

    def timed(self, fn: Callable[[], object], repeats: int = 3) -> float:
        fn()
        times = []
        for _ in range(repeats):
            self.sync()
            started = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    def ours(self, dtype: torch.dtype | None = None, **kwargs) -> Pipeline:
        return Pipeline.load(self.file, device=self.device, dtype=dtype or self.half, **kwargs)

    def diffusers(self, dtype: torch.dtype | None = None, place: bool = True):
        pipe = bench.load_diffusers(self.file, self.folder, dtype or self.half)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(self.device) if place else pipe

    def our_image(self, pipe: Pipeline, sampler: str = "euler_a", steps: int | None = None) -> np.ndarray:
        image = pipe(PROMPT, negative_prompt=NEGATIVE, steps=steps or self.steps, guidance=7.5, sampler=sampler,
                     width=self.size, height=self.size, seed=0, progress=False)[0]  # fmt: skip
        return np.asarray(image).astype(int)

    def their_image(self, pipe, sampler: str = "euler_a", steps: int | None = None) -> np.ndarray:
        import diffusers

        pipe.scheduler = getattr(diffusers, SAMPLERS[sampler]).from_config(pipe.scheduler.config)
        generator = torch.Generator().manual_seed(0)
        image = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps or self.steps, guidance_scale=7.5,
                     width=self.size, height=self.size, generator=generator).images[0]  # fmt: skip
        return np.asarray(image).astype(int)


def difference(a: np.ndarray, b: np.ndarray) -> dict:
    return {"max_pixel_difference": int(np.abs(a - b).max()), "mean_pixel_difference": float(np.abs(a - b).mean())}


def parity(run: Run) -> list[dict]:
    ours, ours_fp32, theirs = run.ours(), run.ours(torch.float32), run.diffusers()
    rows = []
    for sampler in SAMPLERS:
        mine = run.our_image(ours, sampler)
        rows.append({"check": f"{sampler}: ours {run.half} vs diffusers {run.half}",
                     **difference(mine, run.their_image(theirs, sampler))})  # fmt: skip
        rows.append({"check": f"{sampler}: ours {run.half} vs ours float32",
                     **difference(mine, run.our_image(ours_fp32, sampler))})  # fmt: skip
    return rows


def attention_backends(run: Run) -> list[dict]:
    from ldm.models.attention import xformers_available

    backends = ["sdpa", *(["xformers"] if run.device.type == "cuda" and xformers_available() else []), "sliced",
                "math"]  # fmt: skip
    pipe, rows, reference = run.ours(), [], None
    for backend in backends:
        pipe.set_attention(backend)
        run.reset_peak()
        image = run.our_image(pipe)
        seconds = run.timed(lambda: run.our_image(pipe), repeats=1)
        reference = image if reference is None else reference
        rows.append({"check": f"attention {backend}", "seconds_per_image": seconds, "peak_gib": run.peak_gib(),
                     **difference(image, reference)})  # fmt: skip
    return rows


def unet_speed(run: Run) -> list[dict]:
    """The usual it/s: one guided step (the U-Net with CFG) at batch 1, each side as its pipeline calls it."""
    ours, theirs = run.ours(), run.diffusers()
    context = ours.encode([PROMPT, NEGATIVE], 1)
    z, z_batch = (x.to(run.device, run.half) for x in bench.cfg_latents(run.size))
    t = torch.tensor([500, 500], device=run.device)
    with torch.inference_mode():
        mine = run.timed(lambda: ours.model.unet(z, t[:1], context))
        their = run.timed(lambda: theirs.unet(z_batch, t, encoder_hidden_states=context))
    return [{"check": f"U-Net with CFG, {run.size}x{run.size}, it/s", "ours": 1 / mine, "diffusers": 1 / their,
             "ours_over_diffusers": their / mine}]  # fmt: skip


def end_to_end(run: Run) -> list[dict]:
    ours, theirs = run.ours(), run.diffusers()
    mine = run.timed(lambda: run.our_image(ours, steps=run.long_steps), repeats=1)
    their = run.timed(lambda: run.their_image(theirs, steps=run.long_steps), repeats=1)
    row = {"check": f"end to end, {run.long_steps} steps (s)", "ours": mine, "diffusers": their}
    return [row | {"ours_over_diffusers": mine / their}]


def first_image(run: Run) -> list[dict]:
    """Launch to the first image (tools/first_image.py: each side imports only its own code, and prints when its
    image is made)."""
    seconds = {}
    for side in ("ours", "diffusers"):
        command = [sys.executable, str(Path(__file__).with_name("first_image.py")), side, str(run.file),
                   str(run.folder), "--device", run.device.type, "--steps", str(run.steps)]  # fmt: skip
        started = time.time()
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        seconds[side] = float(out.split()[-1]) - started
    ratio = seconds["ours"] / seconds["diffusers"]
    return [{"check": "launch to first image (s)", **seconds, "ours_over_diffusers": ratio}]


def memory(run: Run) -> list[dict]:
    """Peak device memory for one image: as loaded, and offloaded both ways, each beside diffusers' own."""
    rows = []
    for mode, theirs_call in ((None, None), ("model", "enable_model_cpu_offload"),
                              ("sequential", "enable_sequential_cpu_offload")):  # fmt: skip
        run.reset_peak()
        run.our_image(run.ours(offload=mode))
        mine = run.peak_gib()
        theirs = run.diffusers(place=theirs_call is None)
        if theirs_call is not None and run.device.type == "cuda":
            getattr(theirs, theirs_call)()
        run.reset_peak()
        run.their_image(theirs)
        rows.append(
            {"check": f"peak memory, offload {mode or 'none'}", "ours_gib": mine, "diffusers_gib": run.peak_gib()}
        )
        del theirs
    pipe = run.ours()
    z = torch.randn(1, 4, run.tiled // 8, run.tiled // 8, generator=torch.Generator().manual_seed(0))
    run.reset_peak()
    with torch.inference_mode():
        pipe.decode(z.to(run.device), tiling=True)
    rows.append({"check": f"tiled decode {run.tiled}x{run.tiled}", "ours_gib": run.peak_gib()})
    return rows


def vae_fallback(run: Run) -> list[dict]:
    """Latents scaled until the float16 VAE overflows: the decode retries in float32 and must equal that decode."""
    pipe, reference = run.ours(), run.ours(torch.float32)
    z = torch.randn(1, 4, run.size // 8, run.size // 8, generator=torch.Generator().manual_seed(1)) * 2000
    started_half = pipe.vae_dtype != torch.float32
    with torch.inference_mode():
        image, expected = pipe.decode(z.to(run.device)), reference.decode(z.to(run.device))
    return [{"check": "VAE float16 overflow falls back to float32", "started_in_float16": started_half,
             "fell_back": started_half and pipe.vae_dtype == torch.float32, "finite": bool(torch.isfinite(image).all()),
             "max_difference": float((image - expected).abs().max())}]  # fmt: skip


def tiny_decoder(run: Run) -> list[dict]:
    """TAESD (random weights in diffusers' AutoencoderTiny, shared through the key table) decoding one latent, beside
    diffusers' AutoencoderTiny and our full VAE decode, in the run's dtype; and the two TAESDs' difference."""
    from ldm.generate.tiny_decoder import fitted

    pipe = run.ours()
    theirs, tiny = bench.taesd_pair()
    theirs, tiny = theirs.to(run.device, run.half), fitted(tiny.to(run.device, run.half), run.device)
    z = torch.randn(1, 4, run.size // 8, run.size // 8, generator=torch.Generator().manual_seed(0))
    z = z.to(run.device, run.half)
    with torch.inference_mode():
        mine, their = run.timed(lambda: tiny.decode(z)), run.timed(lambda: theirs.decode(z))
        full = run.timed(lambda: pipe.decode(z))
        relative = bench.relative_error(tiny.decode(z).float(), theirs.decode(z).sample.float())
    return [{"check": f"TAESD decode, {run.size}x{run.size} (s)", "ours": mine, "diffusers": their,
             "ours_over_diffusers": mine / their, "ours_over_full_vae": mine / full,
             "relative_difference": relative}]  # fmt: skip


def compiled(run: Run) -> list[dict]:
    started = time.perf_counter()
    eager, pipe = run.ours(), run.ours(compile=True)
    run.our_image(pipe, steps=2)
    compile_seconds = time.perf_counter() - started
    context = pipe.encode([PROMPT, NEGATIVE], 1)
    z = bench.cfg_latents(run.size)[0].to(run.device, run.half)
    t = torch.tensor([500], device=run.device)
    with torch.inference_mode():
        fast = run.timed(lambda: pipe.model.unet(z, t, context))
        slow = run.timed(lambda: eager.model.unet(z, t, context))
    return [{"check": "--compile: U-Net it/s after warm-up", "ours": 1 / fast, "eager": 1 / slow,
             "compiled_over_eager": slow / fast, "compile_and_first_image_seconds": compile_seconds}]  # fmt: skip


SECTIONS = {"parity": parity, "attention": attention_backends, "speed": unet_speed, "end_to_end": end_to_end,
            "first_image": first_image, "memory": memory, "vae_fallback": vae_fallback, "taesd": tiny_decoder,
            "compile": compiled}  # fmt: skip


def missing(dry: bool) -> list[str]:
    """What the run needs and lacks, one line each."""
    lines = []
    if not dry and not torch.cuda.is_available():
        lines.append("no CUDA GPU: this torch sees none (run with --dry-run to test the script on a CPU)")
    for module in ("diffusers", "transformers"):
        try:
            __import__(module)
        except ImportError:
            lines.append(f"no {module}: carry its wheel and pip install it (python -m pip install --no-index ...)")
    return lines


def report(rows: dict[str, list[dict] | str], device: str) -> str:
    lines = [f"# CUDA check on {device}", ""]
    for section, result in rows.items():
        lines.append(f"## {section}")
        if isinstance(result, str):
            lines += [result, ""]
            continue
        keys = list(dict.fromkeys(k for row in result for k in row))
        lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for row in result:
            cells = [f"{row[k]:.3f}" if isinstance(row.get(k), float) else str(row.get(k, "")) for k in keys]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder for report.md and report.json")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU: checks the script itself")
    parser.add_argument("--minutes", type=float, default=8.0, help="time budget; sections past it are skipped")
    parser.add_argument("--cache", type=Path, default=Path("bench"), help="where the random weights are kept")
    parser.add_argument("--only", type=lambda s: s.split(","), default=list(SECTIONS), help=",".join(SECTIONS))
    args = parser.parse_args(argv)
    if unknown := sorted(set(args.only) - set(SECTIONS)):
        parser.error(f"unknown --only sections {unknown}; choose from {','.join(SECTIONS)}")
    if problems := missing(args.dry_run):
        for line in problems:
            print(f"cuda_check: {line}", file=sys.stderr)
        return 2
    run = Run(args)
    device = torch.cuda.get_device_name() if run.device.type == "cuda" else "CPU (dry run)"
    rows: dict[str, list[dict] | str] = {}
    for name in args.only:
        if time.monotonic() > run.deadline:
            rows[name] = f"skipped: past the {args.minutes}-minute budget"
            continue
        started = time.perf_counter()
        try:
            rows[name] = SECTIONS[name](run)
        except Exception as error:  # one section's failure is a finding, not the end of the report
            rows[name] = f"failed: {type(error).__name__}: {error}\n\n```\n{traceback.format_exc(limit=4)}```"
        print(f"cuda_check: {name} in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps({"device": device, "sections": rows}, indent=2) + "\n")
    (args.out / "report.md").write_text(report(rows, device) + "\n")
    print(args.out / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
