"""How accurately each deterministic sampler solves the diffusion ODE, on data whose exact answer is known.

For data x0 ~ N(mu, s^2) the ideal denoiser is D(x, sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2), and the
probability-flow ODE carries x from sigma_0 to mu + (x - mu) * sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_0^2).
Every sampler runs that denoiser on the same grid (Karras sigmas from SD v1's sigma_max down to its sigma_min,
stopping there, so no sampler's final jump to sigma = 0 hides its order) from the same start; the error is
measured against the exact end point. No library decides this.

    python tools/sampler_accuracy.py
"""

from __future__ import annotations

import torch

from ldm.sampling import samplers, schedule

MU, S = 0.4, 0.5
DETERMINISTIC = ("euler", "ddim", "plms", "heun", "dpm2", "lms", "dpmpp_2m", "unipc")


def gaussian_error(name: str, steps: int, n: int = 4096) -> tuple[float, float, int]:
    """(relative error of the end points, relative error of their std, model evaluations) on N(MU, S^2)."""
    train = schedule.training_sigmas().double()
    sigmas = torch.from_numpy(schedule.karras_sigmas(float(train[0]), float(train[-1]), steps + 1))
    calls = []

    def denoiser(x, sigma):
        calls.append(1)
        return (S**2 * x + sigma**2 * MU) / (S**2 + sigma**2)

    start = (
        MU
        + torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        * (S**2 + sigmas[0] ** 2).sqrt()
    )
    end = samplers.SPECS[name].sample(denoiser, start.clone(), sigmas)
    exact = MU + (start - MU) * ((S**2 + sigmas[-1] ** 2) / (S**2 + sigmas[0] ** 2)).sqrt()
    error = ((end - exact).norm() / (exact - MU).norm()).item()
    return error, abs(end.std().item() / exact.std().item() - 1), len(calls)


def main() -> None:
    steps = (5, 10, 20, 50)
    print("| sampler | " + " | ".join(f"{s} steps: error (NFE)" for s in steps) + " |")
    print("|---|" + "---|" * len(steps))
    for name in DETERMINISTIC:
        cells = [f"{e:.2e} ({nfe})" for e, _, nfe in (gaussian_error(name, s) for s in steps)]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
