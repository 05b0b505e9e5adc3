"""Samplers: pure functions that walk a sigma grid with a denoiser D(x, sigma) -> x0 (k-diffusion style).

Every sampler works on x = x0 + sigma * noise (k-diffusion's variable); the DDPM-family samplers
(ddim, plms, ddpm) and the VP solvers (dpmpp, unipc) are the same formulas written in that variable.
Each reproduces the diffusers scheduler built from SD v1.5's scheduler config: same timesteps, same
sigmas, same starting latents and the same noise draws for a CPU generator of the same seed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ldm.config import PREDICTION_TYPES
from ldm.errors import ConfigError
from ldm.sampling import schedule

Denoiser = Callable[[Tensor, Tensor], Tensor]  # (x, sigma) -> denoised x0
# (step, total, x after the step, the denoiser's x0 estimate it stepped from) after each step; what it returns (if
# not None) replaces x: inpainting puts the kept region back this way, previews show the estimate.
Callback = Callable[[int, int, Tensor, Tensor], Tensor | None]
Generators = list[torch.Generator] | None  # one per batch element, so each image reproduces alone


@dataclass(frozen=True)
class Spec:
    """One sampler: its function, its A1111 name, the options it takes, and how diffusers grids it."""

    sample: Callable[..., Tensor]
    display: str  # the name AUTOMATIC1111 writes in its `parameters` text (and its API takes)
    spacing: str  # how diffusers spaces this sampler's timesteps for SD v1.5
    karras: bool  # whether the reference offers Karras sigmas for it
    vp: bool  # starts from unit-variance noise (DDPM-family, VP solvers) rather than sigma_max-scaled noise
    final_sigma_min: bool = False  # ends at sigma(t=0) instead of 0 (set_alpha_to_one=False)
    rounds_karras: bool = True  # diffusers rounds its Karras timesteps to whole numbers
    options: tuple[str, ...] = ()  # keyword options of `sample` beyond the grid: "eta", "prediction_type", "start"
    half_steps: bool = False  # reports its midpoint too, where diffusers' interleaved timesteps stop


DEFAULT_SAMPLER = "plms"  # SD v1.5's scheduler config names PNDMScheduler (with skip_prk_steps: PLMS)


@dataclass(frozen=True)
class Plan:
    """A sampler's grid: sigmas to walk (descending, last = where it ends) and the model timestep of each."""

    name: str
    sigmas: Tensor  # float32
    timesteps: dict[float, float] = field(hash=False)
    start: int = 0  # img2img enters the grid here (see from_strength)
    calls: tuple[int, ...] | None = None  # PLMS: the grid index of each model call (see sample_plms)

    @property
    def init_scale(self) -> float:
        """Initial latents = unit noise * this (diffusers' init_noise_sigma, in x = x0 + sigma * noise)."""
        s0 = float(self.sigmas[0])
        return math.sqrt(s0**2 + 1) if SPECS[self.name].vp else s0

    @property
    def start_sigma(self) -> float:
        """The noise level sampling begins at: sigma_max, or where img2img enters the grid."""
        return float(self.sigmas[self.start])

    @property
    def steps_run(self) -> int:
        """How often the step callback is called, as diffusers' schedulers count steps: once per step; PLMS once
        per model call; Heun and DPM2 after each half step too (but the last, a plain Euler step)."""
        if self.calls is not None:
            return len(self.calls)
        steps = len(self.sigmas) - 1 - self.start
        return 2 * steps - 1 if SPECS[self.name].half_steps else steps

    def sigma_after(self, step: int) -> float:
        """The noise level the latents a step callback gets stand for (where inpainting re-noises the kept
        region to): where the step ended; for PLMS, where its next model call is, as diffusers' PNDM has it."""
        if self.calls is not None:
            last = step == len(self.calls) - 1
            return float(self.sigmas[self.calls[step] + 1 if last else self.calls[step + 1]])
        if SPECS[self.name].half_steps:
            step //= 2  # a half step and its full step both end at the next grid sigma (diffusers' step index)
        return float(self.sigmas[self.start + step + 1])

    def from_strength(self, strength: float) -> Plan:
        """This plan entered part way, as diffusers' img2img does (`get_timesteps`): the last int(steps * strength)
        steps. The image is noised to the entry sigma (x0 + sigma * noise, every sampler family's add_noise in
        this variable). PLMS slices diffusers' PNDM timesteps, whose second entry is doubled, so it enters one grid
        point higher and makes one more model call than the steps it counts, as diffusers does."""
        steps = len(self.sigmas) - 1
        if not 0 <= strength <= 1:
            raise ConfigError(f"strength must be between 0 and 1, got {strength}")
        kept = min(int(steps * strength), steps)  # the same float product as diffusers, for the same rounding
        if kept < 1:
            smallest = math.ceil(1000 / steps) / 1000
            raise ConfigError(f"strength {strength} runs no step of {steps}; use a strength of at least {smallest}")
        return self.last_steps(kept)

    def last_steps(self, kept: int) -> Plan:
        """This plan entered so that its last `kept` steps run (the hires fix runs exactly its steps this way)."""
        steps = len(self.sigmas) - 1
        skipped = steps - kept
        if self.calls is None:
            return dataclasses.replace(self, start=skipped)
        calls = pndm_calls(steps)[skipped:]
        return dataclasses.replace(self, start=calls[0], calls=calls)

    def timestep(self, sigma: Tensor) -> Tensor:
        """The U-Net timestep for a sigma: the grid's own where it has one, else log-sigma interpolation."""
        key = float(sigma.reshape(-1)[0])
        t = self.timesteps.get(key)
        return torch.tensor(float(schedule.sigma_to_t(key)[0]) if t is None else t, dtype=torch.float32)


def pndm_calls(steps: int) -> tuple[int, ...]:
    """Diffusers' PNDM timesteps (skip_prk_steps) as grid indices: 0, 1, 1, 2, ..., steps - 1."""
    return (0,) if steps == 1 else (0, 1, *range(1, steps))


def check(name: str, steps: int, *, karras: bool = False, eta: float = 0.0) -> None:
    if name not in SPECS:
        raise ConfigError(f"unknown sampler {name!r}; choose one of {', '.join(SPECS)}")
    if not isinstance(steps, int) or not 1 <= steps <= schedule.TRAIN_STEPS:
        raise ConfigError(f"steps must be a whole number from 1 to {schedule.TRAIN_STEPS}, got {steps}")
    if karras and not SPECS[name].karras:
        with_karras = ", ".join(n for n, s in SPECS.items() if s.karras)
        raise ConfigError(f"sampler {name!r} has no Karras schedule; use one of {with_karras}")
    if not math.isfinite(eta) or eta < 0:
        raise ConfigError(f"eta must be a finite number >= 0, got {eta}")
    if eta and "eta" not in SPECS[name].options:
        with_eta = ", ".join(n for n, s in SPECS.items() if "eta" in s.options)
        raise ConfigError(f"sampler {name!r} takes no eta; eta is for {with_eta}")


def plan(name: str, steps: int, *, karras: bool = False) -> Plan:
    """The sigma grid and timesteps diffusers uses for this sampler, built from SD v1.5's config."""
    check(name, steps, karras=karras)
    spec = SPECS[name]
    train = schedule.training_sigmas().numpy()
    if spec.spacing == "linspace_int":  # the multistep solvers space whole timesteps over steps + 1 points
        t = np.linspace(0, schedule.TRAIN_STEPS - 1, steps + 1).round()[::-1][:-1].astype(np.float64)
    else:
        t = schedule.timesteps(steps, spec.spacing).astype(np.float64)
    sigmas = schedule.sigma_at(t)
    if karras:  # VP solvers span the whole training range; the others the range of their spaced sigmas
        low, high = (train[0], train[-1]) if spec.vp else (sigmas[-1], sigmas[0])
        sigmas = schedule.karras_sigmas(float(low), float(high), steps)
        t = schedule.sigma_to_t(sigmas)
        if spec.rounds_karras:
            t = t.round()
    final = float(train[0]) if spec.final_sigma_min else 0.0
    grid = torch.from_numpy(np.concatenate([sigmas, [final]]).astype(np.float32))
    table = {float(s): float(ti) for s, ti in zip(grid[:-1].tolist(), t.tolist(), strict=True)}
    return Plan(name, grid, table, calls=pndm_calls(steps) if name == "plms" else None)


def initial_noise(shape: tuple[int, ...], generators: Generators) -> Tensor:
    """Unit Gaussian latents, drawn per batch element from its own CPU generator as diffusers draws them."""
    if not generators:
        return torch.randn(shape)
    if len(generators) != shape[0]:
        raise ConfigError(f"{len(generators)} generators for a batch of {shape[0]}")
    return torch.cat([torch.randn((1, *shape[1:]), generator=g) for g in generators])


def noise_like(x: Tensor, generators: Generators) -> Tensor:
    return initial_noise(tuple(x.shape), generators).to(x.device, x.dtype)


def run(
    p: Plan,
    denoiser: Denoiser,
    noise: Tensor,
    *,
    init: Tensor | None = None,
    generators: Generators = None,
    eta: float = 0.0,
    callback: Callback | None = None,
    prediction_type: str = "epsilon",
) -> Tensor:
    """Sample from unit `noise` to final latents (in the scale the VAE decodes, as diffusers returns them).

    `init`: img2img's clean starting latents, noised to the plan's entry sigma (`Plan.from_strength`).
    `prediction_type` is what the model behind `denoiser` predicts; only PLMS needs it (see sample_plms).
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ConfigError(f"unknown prediction_type {prediction_type!r}; use one of {', '.join(PREDICTION_TYPES)}")
    x = noise * p.init_scale if init is None else init + noise * p.start_sigma
    spec = SPECS[p.name]
    given = {"eta": eta, "prediction_type": prediction_type, "start": p.start}
    options = {option: given[option] for option in spec.options}
    sigmas = p.sigmas.to(x.device)
    if p.calls is not None:
        options["calls"] = p.calls
    elif "start" not in options:
        sigmas = sigmas[p.start :]  # a sampler without memory of the grid before it simply starts later
    x = spec.sample(denoiser, x, sigmas, generators=generators, callback=callback, **options)
    return x / math.sqrt(float(p.sigmas[-1]) ** 2 + 1)  # back from x0 + sigma * noise to the VP latent


def _eps(x: Tensor, denoised: Tensor, sigma: Tensor) -> Tensor:
    return (x - denoised) / sigma


def _report(callback: Callback | None, i: int, total: int, x: Tensor, denoised: Tensor) -> Tensor:
    """Tell the callback about a finished step; x, or the callback's replacement for it."""
    replaced = None if callback is None else callback(i, total, x, denoised)
    return x if replaced is None else replaced


def sample_euler(model: Denoiser, x: Tensor, sigmas: Tensor, *, generators: Generators = None, callback=None) -> Tensor:
    """Euler steps on the probability-flow ODE (Karras et al. 2022, Algorithm 2 without churn); = DDIM, eta 0."""
    n = len(sigmas) - 1
    for i in range(n):
        denoised = model(x, sigmas[i])
        d = _eps(x, denoised, sigmas[i])
        x = x + d * (sigmas[i + 1] - sigmas[i])
        x = _report(callback, i, n, x, denoised)
    return x


def sample_euler_a(
    model: Denoiser, x: Tensor, sigmas: Tensor, *, generators: Generators = None, callback=None
) -> Tensor:
    """Ancestral Euler: step down to sigma_down, then add fresh noise up to sigma_next (k-diffusion)."""
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, s)
        d = _eps(x, denoised, s)
        sigma_up = (s_next**2 * (s**2 - s_next**2) / s**2) ** 0.5
        sigma_down = (s_next**2 - sigma_up**2) ** 0.5
        x = x + d * (sigma_down - s)
        x = x + noise_like(x, generators) * sigma_up  # drawn on every step, the last included, as diffusers does
        x = _report(callback, i, n, x, denoised)
    return x


def sample_heun(model: Denoiser, x: Tensor, sigmas: Tensor, *, generators: Generators = None, callback=None) -> Tensor:
    """Heun's second-order method (Karras et al. 2022, Algorithm 1); an Euler step into sigma = 0."""
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, s)
        d = _eps(x, denoised, s)
        x_euler = x + d * (s_next - s)
        if s_next > 0:
            x_euler = _report(callback, 2 * i, 2 * n - 1, x_euler, denoised)  # the half step (inpainting blends it)
            d_next = _eps(x_euler, model(x_euler, s_next), s_next)
            x = x + (d + d_next) / 2 * (s_next - s)
        else:
            x = x_euler
        x = _report(callback, 2 * i + int(s_next > 0), 2 * n - 1, x, denoised)
    return x


def sample_dpm2(model: Denoiser, x: Tensor, sigmas: Tensor, *, generators: Generators = None, callback=None) -> Tensor:
    """DPM-Solver-2 as in k-diffusion: the derivative at the log-midpoint sigma; an Euler step into 0."""
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, s)
        d = _eps(x, denoised, s)
        if s_next > 0:
            s_mid = torch.lerp(s_next.log(), s.log(), 0.5).exp()
            x_mid = _report(callback, 2 * i, 2 * n - 1, x + d * (s_mid - s), denoised)  # the half step
            x = x + _eps(x_mid, model(x_mid, s_mid), s_mid) * (s_next - s)
        else:
            x = x + d * (s_next - s)
        x = _report(callback, 2 * i + int(s_next > 0), 2 * n - 1, x, denoised)
    return x


def lms_coefficient(sigmas: np.ndarray, i: int, order: int, j: int) -> float:
    """Integral over [sigma_i, sigma_i+1] of the Lagrange basis polynomial of point i - j (exact)."""
    others = [sigmas[i - k] for k in range(order) if k != j]
    basis = np.poly1d([1.0])
    for other in others:
        basis *= np.poly1d([1.0, -other]) / (sigmas[i - j] - other)
    integral = basis.integ()
    return float(integral(sigmas[i + 1]) - integral(sigmas[i]))


def sample_lms(
    model: Denoiser, x: Tensor, sigmas: Tensor, *, start: int = 0, generators: Generators = None, callback=None
) -> Tensor:
    """Linear multistep of order 4 (k-diffusion's sample_lms): derivatives through a Lagrange polynomial in sigma.

    `start`: the grid index img2img enters at. The polynomial's order counts grid points from the grid's start,
    not derivatives seen, as diffusers' LMSDiscreteScheduler counts its step index (so a late entry weighs its first
    derivatives with the coefficients of a longer history)."""
    n = len(sigmas) - 1
    grid = sigmas.double().cpu().numpy()
    history: list[Tensor] = []
    for i in range(start, n):
        denoised = model(x, sigmas[i])
        history = [*history, _eps(x, denoised, sigmas[i])][-4:]
        coefficients = [lms_coefficient(grid, i, min(i + 1, 4), j) for j in range(len(history))]
        x = x + sum(c * d for c, d in zip(coefficients, reversed(history), strict=True))
        x = _report(callback, i - start, n - start, x, denoised)
    return x


def sample_ddim(
    model: Denoiser, x: Tensor, sigmas: Tensor, *, eta: float = 0.0, generators: Generators = None, callback=None
) -> Tensor:
    """DDIM (Song et al. 2021); eta = 0 is an Euler step in sigma, eta > 0 adds fresh noise each step."""
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, s)
        eps = _eps(x, denoised, s)
        if eta == 0:
            x = denoised + eps * s_next
        else:
            a, a_next = 1 / (1 + s**2), 1 / (1 + s_next**2)
            std = eta * ((1 - a_next) / (1 - a) * (1 - a / a_next)) ** 0.5  # DDIM eq. 16, in x_t scale
            x_t = a_next**0.5 * denoised + (1 - a_next - std**2) ** 0.5 * eps + std * noise_like(x, generators)
            x = x_t / a_next**0.5
        x = _report(callback, i, n, x, denoised)
    return x


def sample_plms(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    generators: Generators = None,
    callback=None,
    prediction_type: str = "epsilon",
    calls: tuple[int, ...] | None = None,
) -> Tensor:
    """Pseudo linear multistep (Liu et al. 2022), as diffusers' PNDM with skip_prk_steps runs it.

    `calls` are the grid indices diffusers evaluates the model at (pndm_calls: 0, 1, 1, 2, ...; img2img slices
    them). The first call steps one grid point down; the second re-evaluates there and redoes that step with the
    average of the two outputs (a Heun-like start); every later call at grid point c steps from c to c + 1 with an
    Adams-Bashforth combination of up to four outputs. Like PNDM, it takes the latent as it is at each call: when
    a sliced list makes a call's grid point differ from where the last step ended, the latent is taken there (x is
    rescaled so that the DDPM-scale latent stays the same). PNDM combines raw outputs: for a v-predicting model,
    past v's, turned into noise only with the x of the current step, not each step's own.
    """
    v_model = prediction_type == "v_prediction"
    calls = pndm_calls(len(sigmas) - 1) if calls is None else calls

    def scale(s: Tensor) -> Tensor:  # x = latent * scale(sigma): from the DDPM-scale latent to x0 + sigma * noise
        return (s**2 + 1) ** 0.5

    def output(x: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:  # the model's own prediction, and the x0 estimate
        denoised = model(x, s)
        eps = _eps(x, denoised, s)
        return (eps - s * denoised) / scale(s) if v_model else eps, denoised  # v = sqrt(a) eps - sqrt(1-a) x0

    def step(latent: Tensor, frm: int, to: int, out: Tensor) -> Tensor:
        s, s_next = sigmas[frm], sigmas[to]
        x = latent * scale(s)
        eps = (out + s * x / scale(s)) / scale(s) if v_model else out  # eps = sqrt(a) v + sqrt(1-a) x_t
        return (x + eps * (s_next - s)) / scale(s_next)

    latent = x / scale(sigmas[calls[0]])
    total, outputs, first = len(calls), [], latent
    for k, c in enumerate(calls):
        out, denoised = output(latent * scale(sigmas[c]), sigmas[c])
        if k == 1:  # the first step again, from its start, with the average of both outputs
            latent, frm, to = first, c - 1, c
            out = (out + outputs[-1]) / 2
        else:
            outputs = [*outputs, out][-4:]
            e = outputs[::-1]
            if len(e) == 2:
                out = (3 * e[0] - e[1]) / 2
            elif len(e) == 3:
                out = (23 * e[0] - 16 * e[1] + 5 * e[2]) / 12
            elif len(e) == 4:
                out = (55 * e[0] - 59 * e[1] + 37 * e[2] - 9 * e[3]) / 24
            frm, to = c, c + 1
        latent = step(latent, frm, to, out)
        # Reported after every call, at the noise level of the next (diffusers' PNDM steps per call, and its
        # inpainting blends there, the first call's provisional latent included).
        at = sigmas[to if k == len(calls) - 1 else calls[k + 1]]
        latent = _report(callback, k, total, latent * scale(at), denoised) / scale(at)
    return latent * scale(sigmas[-1])  # where run() expects the last x, whichever grid point the calls ended on


def sample_ddpm(model: Denoiser, x: Tensor, sigmas: Tensor, *, generators: Generators = None, callback=None) -> Tensor:
    """Ancestral DDPM (Ho et al. 2020) with the posterior variance beta-tilde ('fixed_small'), over skipped steps."""
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, s)
        a, a_next = 1 / (1 + s**2), 1 / (1 + s_next**2)
        x_t = x * a**0.5
        beta = 1 - a / a_next  # the effective beta of this (skipped) step
        mean = (a_next**0.5 * beta * denoised + (a / a_next) ** 0.5 * (1 - a_next) * x_t) / (1 - a)
        variance = ((1 - a_next) / (1 - a) * beta).clamp(min=1e-20)
        x_t = mean + variance**0.5 * noise_like(x, generators)  # drawn on the last step too, as diffusers does
        x = x_t / a_next**0.5
        x = _report(callback, i, n, x, denoised)
    return x


def _lambda(sigma: Tensor) -> Tensor:
    return -sigma.log()  # half log-SNR; +inf at sigma = 0


def sample_dpmpp_2m(model: Denoiser, x: Tensor, sigmas: Tensor, *, generators: Generators = None, callback=None):
    """DPM-Solver++(2M) (Lu et al. 2022), midpoint form; first order on the first and last steps."""
    return _dpmpp_2m(model, x, sigmas, sde=False, generators=generators, callback=callback)


def sample_dpmpp_2m_sde(model: Denoiser, x: Tensor, sigmas: Tensor, *, generators: Generators = None, callback=None):
    """SDE DPM-Solver++(2M) (Lu et al. 2022), midpoint form, with fresh noise on every step."""
    return _dpmpp_2m(model, x, sigmas, sde=True, generators=generators, callback=callback)


def _dpmpp_2m(model: Denoiser, x: Tensor, sigmas: Tensor, *, sde: bool, generators: Generators, callback) -> Tensor:
    n = len(sigmas) - 1
    previous = None
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, s)
        h = _lambda(s_next) - _lambda(s)
        decay = torch.exp(-h) if sde else torch.ones_like(h)  # the SDE forgets part of x each step
        first_order = previous is None or i == n - 1  # lower_order_final, and final sigma 0
        if first_order:
            d = denoised
        else:
            r = (_lambda(s) - _lambda(sigmas[i - 1])) / h
            d = denoised + (denoised - previous) / (2 * r)
        if sde:
            x = s_next / s * decay * x + (1 - torch.exp(-2 * h)) * d
            x = x + s_next * (1 - torch.exp(-2 * h)).sqrt() * noise_like(x, generators)
        else:
            x = s_next / s * x - torch.expm1(-h) * d
        previous = denoised
        x = _report(callback, i, n, x, denoised)
    return x


def sample_unipc(model: Denoiser, x: Tensor, sigmas: Tensor, *, generators: Generators = None, callback=None):
    """UniPC (Zhao et al. 2023), bh2, order 2: a UniP predictor step and a UniC corrector with each new output."""
    n = len(sigmas) - 1
    outputs: list[Tensor] = []  # denoised predictions at the sigmas visited so far
    last_x, last_order = None, 1
    for i in range(n):
        denoised = model(x, sigmas[i])
        if i > 0:  # correct the previous step with the model output at its end point
            x = _unipc_update(last_x, sigmas, i - 1, outputs, last_order, denoised)
        outputs = [*outputs, denoised][-2:]
        order = min(2, n - i, i + 1)  # warm up; lower_order_final
        last_x, last_order = x, order
        x = _unipc_update(x, sigmas, i, outputs, order, None)
        x = _report(callback, i, n, x, denoised)
    return x


def _unipc_update(x: Tensor, sigmas: Tensor, i: int, outputs: list[Tensor], order: int, new: Tensor | None) -> Tensor:
    """UniP (new is None) or UniC (new = the model output at sigmas[i + 1]) from sigmas[i] to sigmas[i + 1]."""
    s, s_next = sigmas[i], sigmas[i + 1]
    m0 = outputs[-1]
    h = _lambda(s_next) - _lambda(s)
    hh = -h
    h_phi_1 = torch.expm1(hh)
    b_h = torch.expm1(hh)  # bh2
    rks, d1s = [], []
    for k in range(1, order):
        rk = (_lambda(sigmas[i - k]) - _lambda(s)) / h
        rks.append(rk)
        d1s.append((outputs[-(k + 1)] - m0) / rk)
    rks.append(torch.ones((), device=x.device))
    rks_t = torch.stack(rks)
    rows, b, factorial, h_phi_k = [], [], 1, h_phi_1 / hh - 1
    for k in range(1, order + 1):
        rows.append(rks_t ** (k - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    x_next = s_next / s * x - h_phi_1 * m0
    if new is None:  # predictor
        if d1s:
            rho = (
                torch.tensor(0.5)
                if order == 2
                else torch.linalg.solve(torch.stack(rows)[:-1, :-1], torch.stack(b)[:-1])
            )
            x_next = x_next - b_h * rho * d1s[0]
        return x_next
    rhos = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(torch.stack(rows), torch.stack(b))
    correction = sum(r * d for r, d in zip(rhos[:-1], d1s, strict=True)) if d1s else 0
    return x_next - b_h * (correction + rhos[-1] * (new - m0))


SPECS = {
    "ddim": Spec(sample_ddim, "DDIM", "leading", karras=False, vp=True, final_sigma_min=True, options=("eta",)),
    "plms": Spec(
        sample_plms, "PLMS", "leading", karras=False, vp=True, final_sigma_min=True, options=("prediction_type",)
    ),  # fmt: skip
    "ddpm": Spec(sample_ddpm, "DDPM", "leading", karras=False, vp=True),
    "euler": Spec(sample_euler, "Euler", "linspace", karras=True, vp=False, rounds_karras=False),
    "euler_a": Spec(sample_euler_a, "Euler a", "linspace", karras=False, vp=False),  # diffusers': no Karras option
    "heun": Spec(sample_heun, "Heun", "linspace", karras=True, vp=False, rounds_karras=False, half_steps=True),
    "dpm2": Spec(sample_dpm2, "DPM2", "linspace", karras=True, vp=False, half_steps=True),
    "lms": Spec(sample_lms, "LMS", "linspace", karras=True, vp=False, rounds_karras=False, options=("start",)),
    "dpmpp_2m": Spec(sample_dpmpp_2m, "DPM++ 2M", "linspace_int", karras=True, vp=True),
    "dpmpp_2m_sde": Spec(sample_dpmpp_2m_sde, "DPM++ 2M SDE", "linspace_int", karras=True, vp=True),
    "unipc": Spec(sample_unipc, "UniPC", "linspace_int", karras=True, vp=True),
}


def by_display_name(display: str) -> str | None:
    """Our name for an AUTOMATIC1111 sampler name ("Euler a" -> "euler_a"; any case, or ours itself, as API clients
    send them); None when we have no such sampler."""
    wanted = display.strip().lower()
    return next((name for name, spec in SPECS.items() if wanted in (spec.display.lower(), name)), None)
