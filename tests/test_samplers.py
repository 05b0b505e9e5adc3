"""Every sampler against the matching diffusers scheduler built from SD v1.5's scheduler config."""

import json
from pathlib import Path

import pytest
import torch
from helpers import DIFFUSERS_SCHEDULERS, rel_error

from ldm.errors import ConfigError
from ldm.sampling import samplers

# What diffusers builds SD v1.5's scheduler from: the real file's contents, not ldm's copy of them.
SD15_SCHEDULER = json.loads((Path(__file__).parent / "data" / "sd_v1_5_configs.json").read_text())["scheduler"]
REFERENCE = DIFFUSERS_SCHEDULERS
STOCHASTIC = {"euler_a", "ddpm", "dpmpp_2m_sde", "ddim"}  # ddim draws noise when eta > 0
CASES = [(name, karras) for name in REFERENCE for karras in (False, True) if not karras or samplers.SPECS[name].karras]


def toy_eps(x: torch.Tensor, t) -> torch.Tensor:
    """A deterministic, nonlinear stand-in for the U-Net: eps(x_t, t)."""
    t = torch.as_tensor(t, dtype=torch.float32)
    return torch.tanh(x * (0.5 + t / 1000)) * 0.8 + 0.1 * torch.sin(t / 100 + x)


def generators(seed: int, n: int = 2) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def diffusers_sample(name: str, steps: int, karras: bool, seed: int, eta: float = 0.0) -> torch.Tensor:
    import diffusers

    cls, extra = REFERENCE[name]
    scheduler = getattr(diffusers, cls).from_config(
        SD15_SCHEDULER, **extra, **({"use_karras_sigmas": True} if karras else {})
    )
    scheduler.set_timesteps(steps)
    gens = generators(seed)
    x = torch.cat([torch.randn((1, 4, 8, 8), generator=g) for g in gens]) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps = toy_eps(scheduler.scale_model_input(x, t), t)
        kwargs = {"generator": gens} if name in STOCHASTIC else {}
        if name == "ddim":
            kwargs["eta"] = eta
        x = scheduler.step(eps, t, x, **kwargs).prev_sample
    return x


def our_sample(name: str, steps: int, karras: bool, seed: int, eta: float = 0.0, calls: list | None = None):
    plan = samplers.plan(name, steps, karras=karras)
    gens = generators(seed)

    def denoiser(x, sigma):
        if calls is not None:
            calls.append(float(sigma))
        return x - sigma * toy_eps(x / (sigma**2 + 1) ** 0.5, plan.timestep(sigma))

    return samplers.run(plan, denoiser, samplers.initial_noise((2, 4, 8, 8), gens), generators=gens, eta=eta)


@pytest.mark.parametrize(("name", "karras"), CASES)
def test_matches_diffusers(name, karras):
    for steps in (1, 2, 7, 10, 25):
        ours, ref = our_sample(name, steps, karras, seed=3), diffusers_sample(name, steps, karras, seed=3)
        assert rel_error(ours, ref) <= 1e-5, (name, karras, steps)


def diffusers_img2img(name: str, steps: int, karras: bool, seed: int, strength: float, init: torch.Tensor):
    """StableDiffusionImg2ImgPipeline's loop around the scheduler: get_timesteps, add_noise, then the steps."""
    import diffusers

    cls, extra = REFERENCE[name]
    scheduler = getattr(diffusers, cls).from_config(
        SD15_SCHEDULER, **extra, **({"use_karras_sigmas": True} if karras else {})
    )
    scheduler.set_timesteps(steps)
    kept = min(int(steps * strength), steps)
    start = max(steps - kept, 0)
    timesteps = scheduler.timesteps[start * scheduler.order :]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start * scheduler.order)
    gens = generators(seed)
    noise = torch.cat([torch.randn((1, 4, 8, 8), generator=g) for g in gens])
    x = scheduler.add_noise(init, noise, timesteps[:1].repeat(2))
    for t in timesteps:
        eps = toy_eps(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(eps, t, x, **({"generator": gens} if name in STOCHASTIC else {})).prev_sample
    return x


def our_img2img(name: str, steps: int, karras: bool, seed: int, strength: float, init: torch.Tensor):
    plan = samplers.plan(name, steps, karras=karras).from_strength(strength)
    gens = generators(seed)

    def denoiser(x, sigma):
        return x - sigma * toy_eps(x / (sigma**2 + 1) ** 0.5, plan.timestep(sigma))

    noise = samplers.initial_noise((2, 4, 8, 8), gens)
    return samplers.run(plan, denoiser, noise, init=init, generators=gens)


@pytest.mark.parametrize(("name", "karras"), CASES)
def test_img2img_matches_diffusers_at_every_strength(name, karras):
    init = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(9)) * 0.8
    for steps, strength in ((10, 0.1), (10, 0.5), (10, 0.999), (10, 1.0), (7, 0.3), (20, 0.95), (100, 0.29), (2, 0.5)):
        ours = our_img2img(name, steps, karras, 4, strength, init)
        ref = diffusers_img2img(name, steps, karras, 4, strength, init)
        assert rel_error(ours, ref) <= 1e-5, (name, karras, steps, strength)


def test_img2img_runs_the_steps_diffusers_runs_and_refuses_strengths_that_run_none():
    # diffusers' get_timesteps: int(steps * strength) steps; PNDM one more model call, from one grid point higher.
    assert samplers.plan("euler", 20).from_strength(0.5).steps_run == 10
    assert samplers.plan("euler", 100).from_strength(0.29).steps_run == 28  # int(100 * 0.29) = 28
    ddim, plms = samplers.plan("ddim", 20).from_strength(0.5), samplers.plan("plms", 20).from_strength(0.5)
    assert ddim.timestep(torch.tensor(ddim.start_sigma)) == 451 and plms.timestep(torch.tensor(plms.start_sigma)) == 501
    assert len(plms.calls) == 11 and plms.steps_run == 11  # the callback, like diffusers' bar, counts calls
    with pytest.raises(ConfigError, match="use a strength of at least 0.1"):
        samplers.plan("euler", 10).from_strength(0.05)
    with pytest.raises(ConfigError, match="strength must be between 0 and 1"):
        samplers.plan("euler", 10).from_strength(1.5)


def test_a_callback_can_replace_the_latents_between_steps():
    seen = []

    def keep_zero(i, n, x, denoised):
        seen.append(i)
        return torch.zeros_like(x)

    for name, reports in (("euler", 4), ("plms", 5), ("dpmpp_2m", 4), ("heun", 7), ("dpm2", 7)):
        seen.clear()
        plan = samplers.plan(name, 4)
        out = samplers.run(plan, lambda x, s: x * 0.5, torch.ones(1, 4, 2, 2), callback=keep_zero)
        assert seen == list(range(reports)) == list(range(plan.steps_run)), name
        assert torch.equal(out, torch.zeros_like(out)), name


def test_ddim_with_eta_matches_diffusers():
    assert rel_error(our_sample("ddim", 10, False, 5, eta=0.7), diffusers_sample("ddim", 10, False, 5, eta=0.7)) <= 1e-5


def test_default_timesteps_follow_sd15():
    t = samplers.plan("ddim", 10).timesteps
    assert list(t.values()) == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    assert list(samplers.plan("euler", 10).timesteps.values()) == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert samplers.DEFAULT_SAMPLER == "plms"


def test_stochastic_samplers_depend_on_the_seed_and_reproduce():
    for name in ("euler_a", "ddpm", "dpmpp_2m_sde"):
        assert torch.equal(our_sample(name, 5, False, 1), our_sample(name, 5, False, 1))
        assert not torch.equal(our_sample(name, 5, False, 1), our_sample(name, 5, False, 2))


def test_model_evaluations_per_step():
    for name, per_step in (("euler", 1), ("dpmpp_2m", 1), ("unipc", 1), ("heun", 2), ("dpm2", 2)):
        calls: list[float] = []
        our_sample(name, 10, False, 0, calls=calls)
        assert len(calls) == (10 if per_step == 1 else 19), name  # second-order: no second call into sigma 0
    calls = []
    our_sample("plms", 10, False, 0, calls=calls)
    assert len(calls) == 11  # PLMS evaluates its second timestep twice, as diffusers' PNDM does


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "euler", "steps": 0}, "steps must be"),
        ({"name": "euler", "steps": 1001}, "steps must be"),
        ({"name": "k_euler", "steps": 10}, "choose one of ddim, plms, ddpm, euler"),
        ({"name": "ddim", "steps": 10, "eta": -0.1}, "eta must be"),
        ({"name": "ddim", "steps": 10, "eta": float("nan")}, "eta must be"),
        ({"name": "plms", "steps": 10, "karras": True}, "has no Karras schedule"),
        ({"name": "euler_a", "steps": 10, "karras": True}, "has no Karras schedule"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        samplers.check(**kwargs)


def test_v_prediction_matches_diffusers():
    """A v-predicting model: each sampler takes what diffusers' scheduler with prediction_type v_prediction does.
    PLMS combines the raw v outputs of past steps, as PNDM does, not the noise derived from each."""
    import diffusers

    def toy_v(x, t):
        return toy_eps(x, t) - 0.3 * x

    failures = []
    for name, karras in CASES:
        for steps in (2, 7, 10):
            cls, extra = REFERENCE[name]
            scheduler = getattr(diffusers, cls).from_config(
                SD15_SCHEDULER,
                **extra,
                prediction_type="v_prediction",
                **({"use_karras_sigmas": True} if karras else {}),
            )
            scheduler.set_timesteps(steps)
            gens = generators(4)
            x = torch.cat([torch.randn((1, 4, 8, 8), generator=g) for g in gens]) * scheduler.init_noise_sigma
            for t in scheduler.timesteps:
                kwargs = {"generator": gens} if name in STOCHASTIC else {}
                x = scheduler.step(toy_v(scheduler.scale_model_input(x, t), t), t, x, **kwargs).prev_sample

            plan = samplers.plan(name, steps, karras=karras)

            def denoiser(x_, sigma, plan=plan):  # x0 from v, as ldm.sampling.guidance.CFGDenoiser turns a v output
                v = toy_v(x_ / (sigma**2 + 1) ** 0.5, plan.timestep(sigma))
                return x_ / (sigma**2 + 1) - v * sigma / (sigma**2 + 1) ** 0.5

            gens = generators(4)
            ours = samplers.run(plan, denoiser, samplers.initial_noise((2, 4, 8, 8), gens), generators=gens,
                                prediction_type="v_prediction")  # fmt: skip
            if rel_error(ours, x) > 1e-5:
                failures.append((name, karras, steps, rel_error(ours, x)))
    assert not failures


def test_an_unknown_prediction_type_is_a_one_line_error():
    plan = samplers.plan("plms", 2)
    with pytest.raises(ConfigError, match="unknown prediction_type 'sample'"):
        samplers.run(plan, lambda x, s: x, torch.zeros(1, 4, 8, 8), prediction_type="sample")


@pytest.mark.parametrize("name", list(REFERENCE))
def test_the_callback_gets_each_step_s_denoised_estimate(name):
    """denoised at step i is the denoiser's own output at the step's start, sigma_i (what previews show)."""
    plan = samplers.plan(name, 6)
    outputs: list[tuple[float, torch.Tensor]] = []

    def denoiser(x, sigma):
        outputs.append((float(sigma), x - sigma * toy_eps(x / (sigma**2 + 1) ** 0.5, plan.timestep(sigma))))
        return outputs[-1][1]

    seen = []

    def step_start(i: int) -> float:  # PLMS reports each model call; Heun and DPM2 each half step too
        if plan.calls is not None:
            return float(plan.sigmas[plan.calls[i]])
        return float(plan.sigmas[i // 2 if samplers.SPECS[name].half_steps else i])

    def callback(i, n, x, denoised):
        assert any(s == step_start(i) and out is denoised for s, out in outputs), (name, i)
        seen.append((i, n, x.shape))

    gens = generators(0)
    samplers.run(plan, denoiser, samplers.initial_noise((2, 4, 8, 8), gens), generators=gens, callback=callback)
    n = plan.steps_run
    assert seen == [(i, n, (2, 4, 8, 8)) for i in range(n)] and n >= 6
