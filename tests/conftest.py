from pathlib import Path

import pytest
import torch

from ldm.config import ModelConfig

# `--fast` (`make test-fast`) leaves out the tests marked `full` and these modules, the slowest of the rest, so the
# tier stays under 2 minutes on 2 CPU cores. `make test` runs everything.
FAST_SKIP = ("test_pipeline.py", "test_unet.py", "test_train.py", "test_bench.py", "test_cli.py", "test_cli_many.py",
             "test_cli_preview.py", "test_cli_img2img.py", "test_serve_clients.py", "test_serve_load.py",
             "test_cuda_check.py")  # fmt: skip


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fast", action="store_true", help="the fast tier: without `full` tests and FAST_SKIP modules")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--fast"):
        return
    here = Path(__file__).parent
    if gone := [name for name in FAST_SKIP if not (here / name).is_file()]:  # a renamed module would rejoin silently
        raise pytest.UsageError(f"tests/conftest.py FAST_SKIP names missing test modules: {', '.join(gone)}")
    keep: list[pytest.Item] = []
    slow: list[pytest.Item] = []
    for item in items:
        (slow if item.get_closest_marker("full") or item.path.name in FAST_SKIP else keep).append(item)
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = keep


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
