"""Sampling math over a denoiser D(x, sigma) -> x0: schedules, the samplers and their one table, guidance."""
