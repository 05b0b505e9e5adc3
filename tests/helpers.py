"""Shared test utilities (imported as `from helpers import ...`; pytest puts tests/ on sys.path)."""

import torch


def rel_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """||ours - ref|| / ||ref||, the parity measure of the engine-core issue."""
    return ((ours.double() - ref.double()).norm() / ref.double().norm()).item()
