"""Distil a TAESD for the built-in model from its own VAE: previews and `--vae-decoder taesd` out of the box.

    nice python tools/train_taesd.py                      # resumes from runs/ldm-shapes-taesd if killed
    python tools/train_taesd.py --eval-only               # PSNR and decode time of the shipped file

TAESD's objective, without its adversarial term: the encoder learns the VAE's scaled latent means of rendered
scenes (MSE), the decoder learns the full decoder's images of those latents (the VAE's own reconstruction loss,
object pixels weighted). A third of the decoder's latents are blends of two scenes' latents, as the blurry x0
predictions of early sampling steps are, so previews follow the full decoder there too. Writes
weights/ldm-shapes-taesd.safetensors (float16, ldm's TAESD layout) and reports PSNR against the full decoder
on the eval scenes of tools/eval.py, encoded and generated; also fits the built-in model's approx preview map
(weights/ldm-shapes-approx.json: its latents are not SD v1's, so A1111's coefficients do not fit them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).parent))
import scenes  # noqa: E402
from train import reconstruction_loss  # noqa: E402

from ldm.checkpoints.taesd import load_taesd  # noqa: E402
from ldm.cli.parser import OneLineParser  # noqa: E402
from ldm.generate.pipeline import BUILTIN, Pipeline  # noqa: E402
from ldm.generate.preview import BUILTIN_RGB  # noqa: E402
from ldm.models.taesd import TAESD, TAESDConfig  # noqa: E402

CONFIG = TAESDConfig(channels=32, encoder_blocks=(1, 3, 3), decoder_blocks=(3, 3, 1))  # 4x, as the built-in VAE
OUT = BUILTIN.with_name("ldm-shapes-taesd.safetensors")


def save_state(path: Path, state: dict) -> None:
    """Atomically: a kill during the write leaves the previous state intact."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


@torch.no_grad()
def make_data(pipe: Pipeline, n: int, seed: int, run: Path) -> dict[str, torch.Tensor]:
    """Rendered scenes, their scaled latents, blends of latents, and the full decoder's image of each latent."""
    cache = run / "data.pt"
    if cache.exists():
        return torch.load(cache, weights_only=True)
    vae, scale = pipe.model.vae, pipe.model.config.vae.scale_factor
    images = scenes.to_tensor([s.render() for s, _ in tqdm(scenes.sample(n, seed), desc="render")])
    latents = torch.cat([vae.encode(images[i : i + 256]).mean for i in range(0, n, 256)]) * scale
    g = torch.Generator().manual_seed(seed)
    other, t = latents[torch.randperm(n, generator=g)], torch.rand(n, 1, 1, 1, generator=g)
    blends = torch.lerp(latents, other, t)[: n // 2]
    decoder_latents = torch.cat([latents, blends])
    teacher = torch.cat([pipe.decode(decoder_latents[i : i + 256]) for i in tqdm(range(0, len(decoder_latents), 256),
                                                                                  desc="teacher")])  # fmt: skip
    data = {"images": images, "latents": latents, "decoder_latents": decoder_latents, "teacher": teacher.clamp(-1, 1)}
    save_state(cache, data)
    return data


@torch.no_grad()
def generated_data(pipe: Pipeline, n: int, seed: int, run: Path) -> dict[str, torch.Tensor]:
    """Latents the built-in model generates (its defaults) from training captions, and the full decoder's images:
    they spread wider than encoded scenes (std about 1.4, not 1), and they are what the decoder will see."""
    cache = run / "generated.pt"
    if cache.exists():
        return torch.load(cache, weights_only=True)
    captions = [caption for _, caption in scenes.sample(n, seed)]
    batches = tqdm(range(0, n, 16), desc="generate")
    latents = torch.cat([pipe.generate(pipe.request(prompt=tuple(captions[i : i + 16]), seed=seed + i),
                                       progress=False).latents for i in batches])  # fmt: skip
    teacher = torch.cat([pipe.decode(latents[i : i + 128]) for i in range(0, n, 128)]).clamp(-1, 1)
    data = {"latents": latents, "teacher": teacher}
    save_state(cache, data)
    return data


def train(model: TAESD, data: dict[str, torch.Tensor], args, run: Path) -> None:
    state_file, start = run / "state.pt", 0
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    if state_file.exists():
        state = torch.load(state_file, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - 0.9 * step / args.steps, last_epoch=start - 1)
    model.train()
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="taesd")
    for step in bar:
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        i = torch.randint(len(data["images"]), (args.batch,), generator=g)
        j = torch.randint(len(data["decoder_latents"]), (args.batch,), generator=g)
        encoder_loss = torch.nn.functional.mse_loss(model.encode(data["images"][i]), data["latents"][i])
        decoder_loss = reconstruction_loss(model.decode(data["decoder_latents"][j]), data["teacher"][j])
        opt.zero_grad(set_to_none=True)
        (encoder_loss + decoder_loss).backward()
        opt.step()
        schedule.step()
        bar.set_postfix(enc=f"{encoder_loss.item():.4f}", dec=f"{decoder_loss.item():.4f}")
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            save_state(state_file, {"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1})
    model.eval().requires_grad_(False)


def fit_approx(data: dict[str, torch.Tensor], vae_downscale: int, out: Path) -> None:
    """The built-in model's "Approx cheap" map: least squares from each latent pixel's 4 channels (and 1) to the
    mean colour of the full decoder's pixels above it."""
    latents = data["latents"]
    colours = torch.nn.functional.avg_pool2d(data["teacher"][: len(latents)], vae_downscale)
    x = torch.cat([latents, torch.ones_like(latents[:, :1])], dim=1).permute(0, 2, 3, 1).reshape(-1, 5)
    y = colours.permute(0, 2, 3, 1).reshape(-1, 3)
    solution = torch.linalg.lstsq(x.double(), y.double()).solution.float()  # (5, 3): 4 channel rows, then bias
    error = (x @ solution - y).pow(2).mean().sqrt().item()
    fit = {"source": f"tools/train_taesd.py: least squares over {len(latents)} rendered scenes' scaled latents "
                     f"to the full decoder's colours ({vae_downscale}x{vae_downscale} means); RMSE {error:.3f} "
                     "in the [-1, 1] image range", "weights": [[round(v, 4) for v in row] for row in
                     solution[:4].tolist()], "bias": [round(v, 4) for v in solution[4].tolist()]}  # fmt: skip
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(fit, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}: approx map RMSE {error:.3f} (image range [-1, 1])")


def psnr(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """Over the whole set, images in [-1, 1] taken to [0, 1] as the PNG would be."""
    mse = ((ours.clamp(-1, 1) - reference.clamp(-1, 1)) / 2).pow(2).mean().item()
    return 10 * torch.log10(torch.tensor(1 / mse)).item()


def timed(decode, z: torch.Tensor, repeats: int = 10) -> float:
    """The fastest of `repeats` after a warm-up: on a shared CPU, the others are the neighbours' time."""
    decode(z)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        decode(z)
        times.append(time.perf_counter() - started)
    return min(times)


@torch.no_grad()
def evaluate(pipe: Pipeline, taesd: TAESD, n: int) -> None:
    """PSNR against the full decoder on tools/eval.py's scenes (held-in and held-out, seed 2024): the VAE's
    latents of their renders, and the latents the built-in model generates from their captions."""
    vae, scale = pipe.model.vae, pipe.model.config.vae.scale_factor
    for label, held_out in (("held-in", False), ("held-out", True)):
        targets = [s for s, _ in scenes.sample(n, seed=2024, held_out=held_out)]
        renders = scenes.to_tensor([s.render() for s in targets])
        encoded = vae.encode(renders).mean * scale
        generated = pipe.generate(pipe.request(prompt=tuple(t.caption(0) for t in targets), seed=1000),
                                  progress=False).latents  # fmt: skip
        for kind, z in (("encoded", encoded), ("generated", generated)):
            print(f"PSNR vs the full decoder, {label} eval scenes, {kind} latents: "
                  f"{psnr(taesd.decode(z), pipe.decode(z)):.1f} dB (n={n})")  # fmt: skip
        if not held_out:
            rmse = (taesd.encode(renders) - encoded).pow(2).mean().sqrt()
            print(f"TAESD encoder: latent RMSE {rmse:.3f} against the VAE's (latent std {encoded.std():.3f})")
    for size in (16, 64):
        z = torch.randn(1, 4, size, size)
        full, tiny = timed(pipe.decode, z), timed(taesd.decode, z)
        print(f"decode of one {size}x{size} latent: full VAE {full * 1000:.1f} ms, TAESD {tiny * 1000:.1f} ms "
              f"(ratio {tiny / full:.3f}, {torch.get_num_threads()} threads)")  # fmt: skip


def write(model: TAESD, out: Path) -> None:
    tmp = out.with_suffix(".tmp")
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(tmp),
              metadata={"format": "pt", "ldm_taesd_for": "ldm-shapes (the built-in model)"})  # fmt: skip
    os.replace(tmp, out)


def main() -> None:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--run", type=Path, default=Path("runs/ldm-shapes-taesd"), help="resumable training state")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dataset", type=int, default=3072, help="rendered scenes (and half as many blends)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=25)
    parser.add_argument("--generated", type=int, default=0, help="generated latents added to the decoder's data")
    parser.add_argument("--generated-repeat", type=int, default=4, help="how many times each is in the data")
    parser.add_argument("--eval-n", type=int, default=64, help="eval scenes per row")
    parser.add_argument("--eval-only", action="store_true", help="evaluate --out, train nothing")
    parser.add_argument("--approx-only", action="store_true", help="fit the approx preview map only (cached data)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    started = time.time()
    pipe = Pipeline.load(device="cpu")
    if args.eval_only:
        evaluate(pipe, load_taesd(args.out), args.eval_n)
        return
    args.run.mkdir(parents=True, exist_ok=True)
    data = make_data(pipe, args.dataset, args.seed + 7, args.run)
    fit_approx(data, pipe.model.config.vae.downscale, BUILTIN_RGB)
    if args.approx_only:
        return
    if args.generated:
        extra = generated_data(pipe, args.generated, args.seed + 5000, args.run)
        for key, new in (("decoder_latents", "latents"), ("teacher", "teacher")):
            data[key] = torch.cat([data[key], extra[new].repeat(args.generated_repeat, 1, 1, 1)])
    model = TAESD(CONFIG)
    train(model, data, args, args.run)
    write(model, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) in {(time.time() - started) / 60:.1f} min")
    evaluate(pipe, load_taesd(args.out), args.eval_n)


if __name__ == "__main__":
    main()
