"""The SD v1 noise schedule: betas, alphas_cumprod, sigmas, inference timesteps and Karras sigmas.

Computed in float32 exactly as diffusers computes them from SD v1.5's scheduler config, so the same
settings give the same timesteps and sigmas, and so the same image.
"""

from __future__ import annotations

import numpy as np
import torch

from ldm.errors import ConfigError

TRAIN_STEPS = 1000
BETA_START, BETA_END = 0.00085, 0.012
STEPS_OFFSET = 1  # SD v1's `leading` spacing starts at t = 1, so 10 steps are 901, 801, ..., 1
SPACINGS = ("leading", "linspace", "trailing")


def alphas_cumprod() -> torch.Tensor:
    """scaled_linear betas (linear in sqrt(beta)) -> cumulative product of 1 - beta, float32, (1000,)."""
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, TRAIN_STEPS, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def training_sigmas() -> torch.Tensor:
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t): the noise level of each training timestep, (1000,)."""
    a = alphas_cumprod()
    return ((1 - a) / a) ** 0.5


def timesteps(steps: int, spacing: str) -> np.ndarray:
    """Inference timesteps, descending, as diffusers spaces them (float; whole numbers except `linspace`)."""
    if not 1 <= steps <= TRAIN_STEPS:
        raise ConfigError(f"steps must be between 1 and {TRAIN_STEPS}, got {steps}")
    if spacing == "leading":
        return (np.arange(0, steps) * (TRAIN_STEPS // steps)).round()[::-1].astype(np.float32) + STEPS_OFFSET
    if spacing == "linspace":
        return np.linspace(0, TRAIN_STEPS - 1, steps, dtype=np.float32)[::-1].copy()
    if spacing == "trailing":
        return np.arange(TRAIN_STEPS, 0, -TRAIN_STEPS / steps).round().astype(np.float32) - 1
    raise ConfigError(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")


def sigma_at(t: np.ndarray) -> np.ndarray:
    """Sigma at (possibly fractional) timesteps, linearly interpolated between training steps."""
    return np.interp(t, np.arange(TRAIN_STEPS), training_sigmas().numpy())


def sigma_to_t(sigma: np.ndarray | float) -> np.ndarray:
    """The (fractional) timestep of a sigma, interpolating log-sigma between training steps (k-diffusion's rule)."""
    log_sigmas = np.log(training_sigmas().numpy())
    log_sigma = np.log(np.maximum(np.atleast_1d(sigma), 1e-10))
    low = np.clip(np.searchsorted(log_sigmas, log_sigma, side="right") - 1, 0, TRAIN_STEPS - 2)
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
    return (1 - w) * low + w * (low + 1)


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) eq. 5: sigmas evenly spaced in sigma^(1/rho), from sigma_max down to sigma_min."""
    ramp = np.linspace(0, 1, steps)
    max_inv, min_inv = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (max_inv + ramp * (min_inv - max_inv)) ** rho
