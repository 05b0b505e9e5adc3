"""Samplers solve the diffusion ODE on Gaussian data, where the exact answer is known (tools/sampler_accuracy.py)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "tools"))
from sampler_accuracy import DETERMINISTIC, gaussian_error  # noqa: E402


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_error_shrinks_as_steps_grow(name):
    errors = [gaussian_error(name, steps, n=512)[0] for steps in (5, 10, 20, 50)]
    assert errors[-1] < errors[1] / 4 and errors[-1] < 0.04, errors


@pytest.mark.parametrize("name", ["plms", "heun", "dpm2", "lms", "dpmpp_2m", "unipc"])
def test_higher_order_samplers_beat_euler_with_fewer_evaluations(name):
    euler_error, _, euler_calls = gaussian_error("euler", 50, n=512)
    best = min(gaussian_error(name, steps, n=512)[::2] for steps in (5, 10, 12, 20))
    assert best[0] < euler_error and best[1] < euler_calls, (best, euler_error)
