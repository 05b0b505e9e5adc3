"""Train the built-in model on CPU with ldm's own modules: the VAE first, then the text encoder and U-Net.

    python tools/train.py --out weights/ldm-shapes.safetensors        # resumes from runs/ldm-shapes if killed

Data comes from tools/scenes.py (deterministic per step), captions go through the real CLIP tokenizer, the
U-Net learns SD v1's epsilon objective on SD v1's noise schedule, with 10% of captions dropped so
classifier-free guidance works. The result is an SD v1 single file (original key layout, config in the
metadata) that `Pipeline.load` treats like any other checkpoint.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).parent))
import judge  # noqa: E402
import scenes  # noqa: E402

from ldm.checkpoints.build import load_model
from ldm.checkpoints.convert import write_single_file  # noqa: E402
from ldm.checkpoints.read import PREFIXES  # noqa: E402
from ldm.cli.parser import OneLineParser
from ldm.config import PREDICTION_TYPES, ModelConfig, TextEncoderConfig, UNetConfig, VAEConfig  # noqa: E402
from ldm.models.text_encoder import TextEncoder  # noqa: E402
from ldm.models.unet import UNetModel  # noqa: E402
from ldm.models.vae import AutoencoderKL  # noqa: E402
from ldm.sampling.schedule import alphas_cumprod  # noqa: E402
from ldm.text.tokenizer import Tokenizer  # noqa: E402

CONFIG = ModelConfig(
    unet=UNetConfig(model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(4, 2, 1),
                    num_heads=4, context_dim=64),
    vae=VAEConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1),
    text_encoder=TextEncoderConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2),
)  # fmt: skip
OBJECT_WEIGHT = 9.0
DEFAULTS = {"width": 64, "height": 64, "steps": 20, "sampler": "dpmpp_2m", "guidance": 7.5}


def save_state(path: Path, state: dict) -> None:
    """Atomically: a kill during the write leaves the previous state intact."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def render_dataset(args) -> tuple[torch.Tensor, list[scenes.Scene]]:
    """A fixed set of jittered training scenes, rendered once: (N, 3, 64, 64) in [-1, 1]."""
    pairs = scenes.sample(args.dataset, args.seed + 1)
    return scenes.to_tensor([s.render() for s, _ in tqdm(pairs, desc="render")]), [s for s, _ in pairs]


def reconstruction_loss(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 + MSE with object pixels weighted up: a shape covers 6-22% of the picture, and an unweighted loss
    learns the background long before the shape's colour."""
    background = x[:, :, :1, :1]  # scenes keep their corners free
    weight = 1 + OBJECT_WEIGHT * ((x - background).abs().amax(dim=1, keepdim=True) > 0.1)
    error = recon - x
    return ((error.abs() + error**2) * weight).mean() / weight.mean()


@torch.no_grad()
def reconstruction_score(vae: AutoencoderKL, images: torch.Tensor, dataset: list[scenes.Scene]) -> dict:
    """The judge on VAE reconstructions of the first 256 scenes: the ceiling for the whole model."""
    n = min(256, len(images))
    recon = torch.cat([vae.decode(vae.encode(images[i : min(i + 64, n)]).mean) for i in range(0, n, 64)])
    return judge.score(list(recon.clamp(-1, 1)), dataset[:n])


def train_vae(vae: AutoencoderKL, images: torch.Tensor, args, run: Path) -> None:
    state_file = run / "vae.pt"
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    start = 0
    if state_file.exists():
        state = torch.load(state_file, weights_only=True)
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
    vae.train()
    for step in tqdm(range(start, args.vae_steps), initial=start, total=args.vae_steps, desc="vae"):
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        x = images[torch.randint(len(images), (args.vae_batch,), generator=g)]
        posterior = vae.encode(x)
        recon = vae.decode(posterior.sample(g))
        kl = 0.5 * (posterior.mean**2 + posterior.std**2 - 1 - posterior.logvar).mean()
        loss = reconstruction_loss(recon, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % args.save_every == 0 or step + 1 == args.vae_steps:
            save_state(state_file, {"model": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1})
    vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_dataset(vae: AutoencoderKL, images: torch.Tensor, run: Path, std: float) -> tuple[torch.Tensor, float]:
    """Latent means of the dataset, encoded once; and the scale factor that makes their std `std` (SD v1's
    0.18215 makes it about 1; below 1 shifts the same schedule to more noise, and the file carries it)."""
    cache = run / "latents.pt"
    if cache.exists():
        latents = torch.load(cache, weights_only=True)
    else:
        latents = torch.cat(
            [vae.encode(images[i : i + 256]).mean for i in tqdm(range(0, len(images), 256), desc="encode")]
        )
        save_state(cache, latents)
    return latents, std / latents.std().item()


def finetune_decoder(vae: AutoencoderKL, latents: torch.Tensor, images: torch.Tensor, args, run: Path) -> None:
    """More decoder training on the frozen encoder's latents (as SD's ft-MSE VAE): sharper, truer colours."""
    state_file, start = run / "decoder.pt", 0
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    opt = torch.optim.AdamW(params, lr=args.decoder_lr, weight_decay=0.0)
    if state_file.exists():
        state = torch.load(state_file, weights_only=True)
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
    vae.decoder.train().requires_grad_(True)
    vae.post_quant_conv.requires_grad_(True)
    for step in tqdm(range(start, args.decoder_steps), initial=start, total=args.decoder_steps, desc="decoder"):
        index = torch.randint(len(images), (args.vae_batch,), generator=torch.Generator().manual_seed(step))
        recon = vae.decode(latents[index])
        loss = reconstruction_loss(recon, images[index])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % args.save_every == 0 or step + 1 == args.decoder_steps:
            save_state(state_file, {"model": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1})
    vae.eval().requires_grad_(False)


def training_target(prediction: str, x_t: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, a: torch.Tensor):
    """What the U-Net learns to output for x_t = sqrt(a) x0 + sqrt(1 - a) noise (or pure noise at t=999).

    v = sqrt(a) noise - sqrt(1 - a) x0 is nearly -x0 at high noise, where epsilon is nearly x_t itself: an epsilon
    model must copy its input to within the SNR to say anything about the picture there. Written with x_t, v is
    what the sampler turns back into x0 for the pure-noise samples too."""
    return (a.sqrt() * x_t - x0) / (1 - a).sqrt() if prediction == "v_prediction" else noise


def train_diffusion(unet, text_encoder, latents, dataset, scale, args, run: Path) -> tuple:
    tokenizer = Tokenizer()
    params = [*unet.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
    state_file, start = run / "diffusion.pt", 0
    if state_file.exists():
        state = torch.load(state_file, weights_only=True)
        for module, key in ((unet, "unet"), (text_encoder, "text"), (ema_unet, "ema_unet"), (ema_text, "ema_text")):
            module.load_state_dict(state[key])
        opt.load_state_dict(state["opt"])
        start = state["step"]
    a_bar = alphas_cumprod()
    # Where the noise hides the shape, the epsilon loss weighs an error in the predicted image by the SNR
    # (~0.01); weighting a timestep by 1/SNR, between 1 and --noise-weight-max, makes it count more there.
    noise_weight = ((1 - a_bar) / a_bar).clamp(1, args.noise_weight_max)
    unet.train()
    text_encoder.train()
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="unet+text")
    for step in bar:
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        index = torch.randint(len(dataset), (args.batch,), generator=g)
        rng = random.Random(step)
        captions = [
            "" if rng.random() < 0.1 else dataset[i].caption(rng.randrange(len(scenes.TEMPLATES)))
            for i in index.tolist()
        ]
        x0 = latents[index] * scale
        t = torch.randint(0, 1000, (args.batch,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        a = a_bar[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        if args.pure_noise_fraction > 0:
            # At t=999 SD v1's schedule still lets the picture show through (SNR 0.005), and a small U-Net learns
            # to read the shape's position from that faint trace, never from the caption; sampling then starts
            # from pure noise and puts the shape wherever the noise happens to suggest. Some samples at t=999
            # with nothing but noise leave the caption as the only source (Lin et al. 2023 make the whole
            # schedule reach zero SNR instead; that would change the sampler, this keeps SD v1's).
            pure = (torch.rand(args.batch, generator=g) < args.pure_noise_fraction).view(-1, 1, 1, 1)
            t = torch.where(pure.flatten(), 999, t)
            a = a_bar[t].view(-1, 1, 1, 1)
            x_t = torch.where(pure, noise, x_t)
        for group in opt.param_groups:  # short warm-up, then constant
            group["lr"] = args.lr * min(1.0, (step + 1) / 200)
        target = training_target(args.prediction, x_t, x0, noise, a)
        error = (unet(x_t, t, text_encoder(tokenizer(captions))) - target).square().mean(dim=(1, 2, 3))
        loss = (error * noise_weight[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema, live in ((ema_unet, unet), (ema_text, text_encoder)):
                for e, p in zip(ema.parameters(), live.parameters(), strict=True):
                    e.lerp_(p, 1 - decay)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            save_state(state_file, {"unet": unet.state_dict(), "text": text_encoder.state_dict(),
                                    "ema_unet": ema_unet.state_dict(), "ema_text": ema_text.state_dict(),
                                    "opt": opt.state_dict(), "step": step + 1})  # fmt: skip
    return ema_unet.eval(), ema_text.eval()


def main() -> None:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("weights/ldm-shapes.safetensors"))
    parser.add_argument("--run", type=Path, default=Path("runs/ldm-shapes"), help="resumable training state")
    parser.add_argument("--vae-steps", type=int, default=600)
    parser.add_argument("--steps", type=int, default=2800, help="U-Net + text encoder steps")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--vae-batch", type=int, default=16)
    parser.add_argument("--dataset", type=int, default=8192, help="jittered scenes encoded once for stage 2")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--decoder-steps", type=int, default=400)
    parser.add_argument("--decoder-lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-from", type=Path, help="take the VAE of this ldm checkpoint instead of training one")
    parser.add_argument(
        "--unet-mult",
        type=lambda v: tuple(map(int, v.split(","))),
        default=CONFIG.unet.channel_mult,
        help="U-Net channel multiplier per level, e.g. 1,2,2,2 for a 2x2 bottom level",
    )
    parser.add_argument("--latent-std", type=float, default=1.0, help="std of the scaled latents")
    parser.add_argument("--noise-weight-max", type=float, default=1.0, help="1: the plain loss")
    parser.add_argument("--prediction", choices=PREDICTION_TYPES, help="epsilon, or the --init-from file's")
    parser.add_argument("--pure-noise-fraction", type=float, default=0.0,
                        help="of each batch, at t=999 with pure noise as input (v_prediction only)")  # fmt: skip
    parser.add_argument("--init-from", type=Path, help="fine-tune this ldm checkpoint: its VAE, U-Net and text encoder")
    parser.add_argument("--save-every", type=int, default=10, help="steps between resumable checkpoints")
    args = parser.parse_args()
    if args.latent_std <= 0 or args.noise_weight_max < 1:
        parser.error("--latent-std must be > 0 and --noise-weight-max >= 1 (1 is the plain loss)")
    if not 0 <= args.pure_noise_fraction < 1:
        parser.error("--pure-noise-fraction must be in [0, 1)")
    for flag, path in (("--vae-from", args.vae_from), ("--init-from", args.init_from)):
        if path and not path.exists():
            parser.error(f"{flag} {path} does not exist; pass an ldm checkpoint file")
    if args.vae_from and args.init_from:
        parser.error("--init-from already takes the file's VAE; drop --vae-from")
    if args.init_from and (args.unet_mult != CONFIG.unet.channel_mult or args.latent_std != 1.0):
        parser.error("--init-from keeps the file's U-Net shape and latent scale; drop --unet-mult and --latent-std")
    torch.manual_seed(args.seed)
    started = time.time()
    attention = tuple(2**i for i in range(len(args.unet_mult)))  # cross-attention at every level
    unet_config = replace(CONFIG.unet, channel_mult=args.unet_mult, attention_resolutions=attention)
    start = load_model(args.init_from) if args.init_from else None
    text_config = CONFIG.text_encoder
    if start:  # a fine-tune keeps the file's architecture; only what the U-Net predicts may change
        unet_config, text_config = start.config.unet, start.config.text_encoder
    args.prediction = args.prediction or unet_config.prediction_type
    if args.pure_noise_fraction and args.prediction != "v_prediction":
        parser.error("--pure-noise-fraction needs --prediction v_prediction (epsilon says nothing in pure noise)")
    unet_config = replace(unet_config, prediction_type=args.prediction)
    args.run.mkdir(parents=True, exist_ok=True)
    vae, unet, text_encoder = AutoencoderKL(CONFIG.vae), UNetModel(unet_config), TextEncoder(text_config)
    if start:
        unet.load_state_dict(start.unet.state_dict())
        text_encoder.load_state_dict(start.text_encoder.state_dict())
    images, dataset = render_dataset(args)
    if start or args.vae_from:  # the run's latents.pt must come from this same VAE: use a fresh --run folder
        vae = (start or load_model(args.vae_from)).vae.requires_grad_(False)
    else:
        train_vae(vae, images, args, args.run)
        print("VAE reconstructions, judged:", reconstruction_score(vae, images, dataset), flush=True)
    latents, scale = encode_dataset(vae, images, args.run, args.latent_std)
    if start:
        scale = start.config.vae.scale_factor  # exactly the latent scale the fine-tuned U-Net learned
    elif not args.vae_from:
        finetune_decoder(vae, latents, images, args, args.run)
        print("after decoder fine-tune:", reconstruction_score(vae, images, dataset), flush=True)
    unet, text_encoder = train_diffusion(unet, text_encoder, latents, dataset, scale, args, args.run)
    config = ModelConfig(unet=unet_config, vae=VAEConfig(**{**vae.config.__dict__, "scale_factor": scale}),
                         text_encoder=text_config)  # fmt: skip
    modules = {"unet": unet, "vae": vae, "text_encoder": text_encoder}
    tensors = {PREFIXES[c] + k: v.half() for c, m in modules.items() for k, v in m.state_dict().items()}
    write_single_file(tensors, args.out, config, force=True)
    (args.out.parent / "defaults.json").write_text(json.dumps(DEFAULTS, indent=2) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) in {(time.time() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
