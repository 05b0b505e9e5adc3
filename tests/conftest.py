import pytest
import torch

from ldm.config import ModelConfig


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Model hashes cached by the code under test (and its subprocesses) stay out of the user's ~/.cache."""
    monkeypatch.setenv("LDM_CACHE", str(tmp_path_factory.mktemp("ldm-cache")))


@pytest.fixture
def tiny_config() -> ModelConfig:
    return ModelConfig.preset("tiny")
