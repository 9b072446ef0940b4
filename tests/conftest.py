"""Shared pytest configuration: the --runslow option, seeding, TF32 off, Hypothesis profiles."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Tests compare runs bit for bit: their thread count must not follow the machine's load
# (coun_fast.threads' auto choice), so they run with torch's count unless a test says otherwise.
os.environ.setdefault("COUN_FAST_THREADS", "torch")

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

# The autouse seeding fixture is function-scoped; every property test draws its own seed and builds
# its inputs from a private torch.Generator, so sharing that fixture across examples is harmless.
_PROPERTY_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.register_profile("ci", max_examples=25, **_PROPERTY_SETTINGS)
settings.register_profile("dev", max_examples=10, **_PROPERTY_SETTINGS)
settings.register_profile("thorough", max_examples=300, **_PROPERTY_SETTINGS)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long tests, deselected unless --runslow is given")
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU, skipped at setup when there is none")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow test: pass --runslow to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("cuda") is not None and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_num_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
